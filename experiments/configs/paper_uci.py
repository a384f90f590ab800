r"""FedRecon vs its baselines and ablations on UCI Multiple Features.

The grid of the paper's main comparison: every method, label skew alpha in
{0.1, 5.0}, missing rates 0.1..0.7, three seeds (120 runs).

  python -m experiments.sweep --sweep_root=workdirs/paper_uci --config=paper_uci
  # or split over 4 machines / processes sharing the root:
  python -m experiments.sweep --sweep_root=workdirs/paper_uci \
      --config=paper_uci --num_shards=4 --shard_index=0   # ... 1, 2, 3
"""

GRID = {
    'method': ['fedrecon', 'fedrecon_no_freeze', 'fedrecon_no_map',
               'zero_fill', 'unimodal'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.1, 0.3, 0.5, 0.7],
    'seed': [0, 1, 2],
    'dataset': ['uci_multifeature'],
}

# Passed to every cell (the Config defaults otherwise).
FLAGS = {
    'num_clients': 20,
    'clients_per_round': 10,
    'gen_rounds': 30,
    'rounds': 50,
}
