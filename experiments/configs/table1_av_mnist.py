r"""Table 1 on AV-MNIST: modalities of different kinds (an image and a
spoken digit's MFCC sequence).

FedRecon against zero-fill and unimodal with the default schedule and
server (FedOpt), high and low label skew, missing rate 0.3, seeds 0-2: 18
runs (times in experiments/results/paper/).

  python -m experiments.sweep --sweep_root=workdirs/table1_av_mnist \
      --config=table1_av_mnist --report
"""

GRID = {
    'method': ['fedrecon', 'zero_fill', 'unimodal'],
    'alpha': [0.1, 5.0],
    'missing_rate': [0.3],
    'seed': [0, 1, 2],
    'dataset': ['av_mnist'],
}

FLAGS = {'checkpoint_every': 0, 'eval_every': 5}
