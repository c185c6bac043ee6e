"""Data: the datasets (datasets.py) and the token cache GPT training reads (token_cache.py)."""

from vqgpt.data.datasets import (
                                 DATASETS,
                                 SPLITS,
                                 build_dataset,
                                 config_facts,
                                 dataset_info,
                                 eval_split,
                                 files_fingerprint,
                                 read_idx,
)

__all__ = ["DATASETS", "SPLITS", "build_dataset", "config_facts", "dataset_info", "eval_split", "files_fingerprint",
           "read_idx"]
