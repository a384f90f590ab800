r"""Table 1, FedAvg rows: FedRecon and zero-fill with the FedAvg server.

The cells of `table1_reduced` for the two methods the paper's headline
compares, with `--server_opt=fedavg` instead of FedOpt (Algorithm 2 FedAdam):
high and low label skew, missing rate 0.3, seeds 0-2 (12 runs).

  python -m experiments.sweep --sweep_root=workdirs/table1_fedavg \
      --config=table1_fedavg
"""

GRID = {
    'method': ['fedrecon', 'zero_fill'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.3],
    'seed': [0, 1, 2],
    'dataset': ['uci_multifeature'],
}

FLAGS = {'checkpoint_every': 0, 'eval_every': 1, 'server_opt': 'fedavg'}
