"""Reading HAM10000 / DermaMNIST (and prepared caches or litdata chunks), splitting without leaks, synthetic data, downloads; a user's CSV files are read by ``data.csvfile`` (not UTF-8, empty or separated by ';': one sentence with the fix)."""

from .ham10000 import Dataset, load_dataset
from .split import make_split, read_manifest

__all__ = ["Dataset", "load_dataset", "make_split", "read_manifest"]
