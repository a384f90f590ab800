r"""Table 1 on complete test samples: FedRecon vs zero-fill vs unimodal.

The cells of `table1_reduced` for three methods and two seeds, run by code that
also scores the test set with nothing missing (`f1_macro_complete`): the paper
compares with its unimodal baseline on that footing. The masked-test numbers of
these cells equal table1_reduced's (same seeds, same programs). ~25 CPU-minutes.

  python -m experiments.sweep --sweep_root=workdirs/table1_complete \
      --config=table1_complete
"""

GRID = {
    'method': ['fedrecon', 'zero_fill', 'unimodal'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.3],
    'seed': [0, 1],
    'dataset': ['uci_multifeature'],
}

FLAGS = {'checkpoint_every': 0, 'eval_every': 1}
