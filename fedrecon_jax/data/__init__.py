"""Multimodal datasets as TFDS builders, loaded into numpy (see loader.py).

Importing the package finds every builder module (each module's `BUILDERS`,
see base.py), which registers each builder with TFDS under its name (none
clashes with a TFDS built-in; tested), so `tfds.builder('uci_multifeature',
data_dir=...)` and `tfds.data_source(...)` work by name, without TensorFlow.
"""

from fedrecon_jax.data.loader import Dataset
from fedrecon_jax.data.loader import DATASETS
from fedrecon_jax.data.loader import load
from fedrecon_jax.data.loader import needs_manual_dir
from fedrecon_jax.data.loader import Split

__all__ = ['DATASETS', 'Dataset', 'Split', 'load', 'needs_manual_dir']
