"""The token cache: a dataset tokenized once by a tokenizer checkpoint, read by GPT training.

    <cache_dir>/header.json          tokenizer hash, grid, K, splits, dataset facts
    <cache_dir>/<split>_tokens.npy   (N, h*w) uint16/int32, memory-mapped on read
    <cache_dir>/<split>_labels.npy   (N,) int64

GPT training reads only this (LlamaGen's "extract codes first"): the encoder never runs in its loop. A cache
made by another tokenizer is refused, so a retrained tokenizer never pairs with stale codes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vqgpt.checkpoint import checkpoint_hash, load_checkpoint
from vqgpt.config import DatasetConfig
from vqgpt.data import build_dataset
from vqgpt.errors import UserError
from vqgpt.loggers import progress

HEADER = "header.json"
FORMAT_VERSION = 1


def cache_dtype(num_codewords: int) -> np.dtype:
    """The smallest unsigned type that holds every index (uint16 up to K = 65536)."""
    return np.dtype(np.uint16) if num_codewords <= 2**16 else np.dtype(np.int32)


@torch.no_grad()
def build_token_cache(tokenizer_path: str | Path, data_cfg: DatasetConfig, cache_dir: str | Path, *,
                      hflip_copies: bool = False, batch_size: int = 256, device: str | torch.device = "cpu",
                      num_workers: int = 0) -> Path:
    """Tokenize the train and test splits with the tokenizer checkpoint; written atomically to `cache_dir`."""
    cache_dir = Path(cache_dir)
    tokenizer = load_checkpoint(tokenizer_path, expected_stage="tokenizer", map_location=device).model
    h, w = tokenizer.latent_grid
    dtype = cache_dtype(tokenizer.num_codewords)
    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sizes = {}
    try:
        for split in ("train", "test"):
            dataset = build_dataset(data_cfg, split, train=False)
            flips = (False, True) if hflip_copies and split == "train" else (False,)
            n = len(dataset) * len(flips)
            tokens = np.lib.format.open_memmap(tmp / f"{split}_tokens.npy", mode="w+", dtype=dtype, shape=(n, h * w))
            labels = np.empty(n, dtype=np.int64)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            row = 0
            for images, y in progress(loader, desc=f"tokenizing {split}"):
                images = images.to(device)
                for copy, flip in enumerate(flips):  # the flipped copy of item i is row i + len(dataset)
                    start = row + copy * len(dataset)
                    codes = tokenizer.tokenize(images.flip(-1) if flip else images)
                    tokens[start:start + len(images)] = codes.reshape(len(images), -1).cpu().numpy()
                    labels[start:start + len(images)] = y.numpy()
                row += len(images)
            tokens.flush()
            del tokens
            np.save(tmp / f"{split}_labels.npy", labels)
            sizes[split] = n
        header = {
            "format_version": FORMAT_VERSION,
            "tokenizer_hash": checkpoint_hash(tokenizer_path),
            "tokenizer_path": str(Path(tokenizer_path).resolve()),
            "grid": [h, w],
            "codebook_size": tokenizer.num_codewords,
            "dtype": dtype.name,
            "hflip_copies": hflip_copies,
            "splits": sizes,
            "data_config": dataclasses.asdict(data_cfg),
        }
        (tmp / HEADER).write_text(json.dumps(header, indent=2) + "\n")
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def read_header(cache_dir: str | Path, tokenizer_path: str | Path | None = None) -> dict:
    """The cache's header, checked against the tokenizer checkpoint that should have made it."""
    cache_dir = Path(cache_dir)
    try:
        header = json.loads((cache_dir / HEADER).read_text())
    except FileNotFoundError:
        raise UserError(f"{cache_dir} is not a token cache (no {HEADER}); build one with "
                        f"python scripts/extract_codes.py checkpoint_vae=... cache_dir={cache_dir}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{cache_dir / HEADER} is not valid JSON ({e}); delete {cache_dir} to rebuild it") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{cache_dir} has token-cache format {header.get('format_version')}, this vqgpt reads "
                        f"{FORMAT_VERSION}; delete {cache_dir} to rebuild it")
    if tokenizer_path is not None:
        expected = checkpoint_hash(tokenizer_path)
        if header["tokenizer_hash"] != expected:
            raise UserError(f"token cache {cache_dir} was made by another tokenizer ({header['tokenizer_path']}, "
                            f"weights {header['tokenizer_hash']}), not {tokenizer_path} (weights {expected}); "
                            f"delete the cache or point cache_dir elsewhere to rebuild it")
    return header


class TokenDataset(Dataset):
    """One split of a token cache: (tokens (h*w,) long, label) pairs, memory-mapped."""

    def __init__(self, cache_dir: str | Path, split: str):
        cache_dir = Path(cache_dir)
        self.tokens = np.load(cache_dir / f"{split}_tokens.npy", mmap_mode="r")
        self.labels = np.load(cache_dir / f"{split}_labels.npy")
        if len(self.tokens) != len(self.labels):
            raise UserError(f"token cache {cache_dir}: {split} has {len(self.tokens)} token rows but "
                            f"{len(self.labels)} labels; delete it to rebuild it")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.tokens[i].astype(np.int64)), int(self.labels[i])


def default_cache_dir(tokenizer_path: str | Path, data_cfg: DatasetConfig, hflip_copies: bool) -> Path:
    """Beside the tokenizer checkpoint, named after the data and the tokenizer's weights: a retrained
    tokenizer saved to the same place gets a cache of its own instead of a refusal."""
    name = f"token_cache_{data_cfg.name}_{data_cfg.image_size}" + ("_flip" if hflip_copies else "")
    name += f"_{checkpoint_hash(tokenizer_path)[:8]}"
    return Path(tokenizer_path).resolve().parent / name


def prepare_token_cache(tokenizer_path: str | None, data_cfg: DatasetConfig | None, cache_dir: str | None,
                        hflip_copies: bool = False, device: str | torch.device = "cpu") -> tuple[Path, dict]:
    """Open the cache for this tokenizer, building it first if missing; the data config defaults to the
    one stored in the tokenizer checkpoint. Returns (cache_dir, header)."""
    from vqgpt.checkpoint import dataclass_from_dict, read_meta

    if not tokenizer_path:
        raise UserError("checkpoint_vae is not set; pass the tokenizer checkpoint, e.g. "
                        "checkpoint_vae=outputs/train_tokenizer/<dataset>/<date>/checkpoints/last")
    meta = read_meta(tokenizer_path, expected_stage="tokenizer")
    if data_cfg is None:
        if "data_config" not in meta:
            raise UserError(f"{tokenizer_path} does not record its data config; pass dataset=<name> to say "
                            "which data to tokenize")
        data_cfg = dataclass_from_dict(DatasetConfig, meta["data_config"])
    if (data_cfg.image_size, data_cfg.channels) != (meta["image_size"], meta["channels"]):
        raise UserError(f"dataset {data_cfg.name} gives {data_cfg.channels}x{data_cfg.image_size}px images but the "
                        f"tokenizer {tokenizer_path} was trained on {meta['channels']}x{meta['image_size']}px; "
                        "set dataset.image_size/dataset.channels to match, or drop dataset=... to use its own")
    cache = Path(cache_dir) if cache_dir else default_cache_dir(tokenizer_path, data_cfg, hflip_copies)
    if not (cache / HEADER).exists():
        print(f"token cache {cache} is missing: tokenizing {data_cfg.name} once")
        build_token_cache(tokenizer_path, data_cfg, cache, hflip_copies=hflip_copies, device=device)
    return cache, read_header(cache, tokenizer_path)
