"""Multimodal datasets as TFDS builders, loaded into numpy (see loader.py)."""

from fedrecon_jax.data.loader import Dataset
from fedrecon_jax.data.loader import DATASETS
from fedrecon_jax.data.loader import load
from fedrecon_jax.data.loader import Split

__all__ = ['DATASETS', 'Dataset', 'Split', 'load']
