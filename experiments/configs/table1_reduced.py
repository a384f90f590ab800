r"""Table 1, reduced: FedRecon vs zero-fill vs unimodal on UCI Multiple Features.

The default-length schedule (30 generator + 50 task rounds, 20 clients, 10 per
round), FedOpt (Adam) server, high and low label skew, two missing rates, one
seed: 12 runs, ~15 CPU-minutes on 2 cores. The full grid is `paper_uci`.

  python -m experiments.sweep --sweep_root=experiments/results/table1_reduced \
      --config=table1_reduced
"""

GRID = {
    'method': ['fedrecon', 'zero_fill', 'unimodal'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.3, 0.5],
    'seed': [0],
    'dataset': ['uci_multifeature'],
}

FLAGS = {'checkpoint_every': 0}
