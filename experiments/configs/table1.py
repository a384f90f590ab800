r"""Table 1, full grid: the paper's main comparison on UCI Multiple Features.

Every method x server (FedAvg, FedOpt) x label skew alpha {0.1, 5.0} x missing
rate {0.1, 0.3, 0.5} x seeds 0-2: 180 runs of the default schedule (~9
CPU-hours on 2 cores; shard it over processes or machines sharing the root):

  python -m experiments.sweep --sweep_root=workdirs/table1 --config=table1
  python -m experiments.sweep --sweep_root=workdirs/table1 --config=table1 \
      --num_shards=4 --shard_index=0   # ... 1, 2, 3; then once more unsharded
                                       # (finished cells are skipped) to report
"""

GRID = {
    'method': ['fedrecon', 'fedrecon_no_freeze', 'fedrecon_no_map',
               'zero_fill', 'unimodal'],
    'server_opt': ['fedavg', 'fedopt'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.1, 0.3, 0.5],
    'seed': [0, 1, 2],
    'dataset': ['uci_multifeature'],
}

FLAGS = {'checkpoint_every': 0, 'eval_every': 1}
