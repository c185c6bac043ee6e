"""Data: the datasets (datasets.py) and the token cache GPT training reads (token_cache.py)."""

from vqgpt.data.datasets import DATASETS, build_dataset, dataset_info, files_fingerprint, read_idx

__all__ = ["DATASETS", "build_dataset", "dataset_info", "files_fingerprint", "read_idx"]
