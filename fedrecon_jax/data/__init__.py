"""Multimodal datasets as TFDS builders, loaded into numpy (see loader.py).

Importing the package imports every builder module, which registers each
builder with TFDS under its name (none clashes with a TFDS built-in; tested),
so `tfds.builder('uci_multifeature', data_dir=...)` and
`tfds.data_source(...)` work by name, without TensorFlow.
"""

from fedrecon_jax.data.loader import Dataset
from fedrecon_jax.data.loader import DATASETS
from fedrecon_jax.data.loader import load
from fedrecon_jax.data.loader import Split
# pylint: disable=g-bad-import-order,unused-import
from fedrecon_jax.data import polymnist  # polymnist, polymnist_5k(_small)
from fedrecon_jax.data import uci_har
from fedrecon_jax.data import uci_multifeature  # and uci_multifeature_small
# pylint: enable=g-bad-import-order,unused-import

__all__ = ['DATASETS', 'Dataset', 'Split', 'load']
