r"""Table 1, reduced: every method at one missing rate, three seeds.

FedRecon, its ablations (no freezing, no mapping) and the baselines (zero-fill,
unimodal) on UCI Multiple Features with the FedOpt (Adam) server, high and low
label skew, missing rate 0.3, seeds 0-2: 30 runs of the default schedule (30
generator + 50 task rounds, 20 clients, 10 per round; times in
experiments/results/paper/). Evaluated every round, so the same runs give the freezing figure
(`experiments.paper --parts=report`). The full grid is `table1`.

  python -m experiments.sweep --sweep_root=workdirs/table1_reduced \
      --config=table1_reduced
"""

GRID = {
    'method': ['fedrecon', 'fedrecon_no_freeze', 'fedrecon_no_map',
               'zero_fill', 'unimodal'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.3],
    'seed': [0, 1, 2],
    'dataset': ['uci_multifeature'],
}

FLAGS = {'checkpoint_every': 0, 'eval_every': 1}
