"""Reading HAM10000 / DermaMNIST (and prepared caches or litdata chunks), splitting without leaks, synthetic data, downloads."""

from .ham10000 import Dataset, load_dataset
from .split import make_split, read_manifest

__all__ = ["Dataset", "load_dataset", "make_split", "read_manifest"]
