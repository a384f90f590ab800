r"""Ablation: task encoders aggregated by the samples that really hold each
modality (`--task_encoder_weights=present`, the weighting before issue 10)
instead of by what they trained on (FedRecon's reconstructions count).

The FedRecon cells of `table1_reduced` with that one flag changed: high and
low label skew, missing rate 0.3, seeds 0-2 (6 runs). `experiments.paper`
reports them next to Table 1's FedRecon row.

  python -m experiments.sweep --sweep_root=workdirs/ablation_task_weights \
      --config=ablation_task_weights
"""

GRID = {
    'method': ['fedrecon'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.3],
    'seed': [0, 1, 2],
    'dataset': ['uci_multifeature'],
}

FLAGS = {'checkpoint_every': 0, 'eval_every': 1,
         'task_encoder_weights': 'present'}
