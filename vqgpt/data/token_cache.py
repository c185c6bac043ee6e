"""The token cache: a dataset tokenized once by a tokenizer checkpoint, read by GPT training.

    <cache_dir>/header.json          tokenizer hash, grid, K, splits, dataset facts
    <cache_dir>/<split>_tokens.npy   (N, h*w) uint16/int32, or (N, h*w, D) float16 patches; memory-mapped
    <cache_dir>/<split>_labels.npy   (N,) int64

GPT training reads only this (LlamaGen's "extract codes first"): the encoder never runs in its loop. The
default cache lives in vqgpt's cache (`tokens/<key>`), keyed on the tokenizer's weights and the full data config
(root, size, resize, generator sizes and seed, ...); its header also records each split's image files (count and
a hash of paths, sizes and mtimes). A cache whose header disagrees with the request or with the files now is
rebuilt there, and refused (saying which) in a `cache_dir` you named, so stale codes never train a GPT silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vqgpt.checkpoint import checkpoint_hash, load_checkpoint, read_meta
from vqgpt.config import DatasetConfig, dataclass_from_dict
from vqgpt.data.datasets import build_dataset, config_facts, dataset_info, files_fingerprint
from vqgpt.device import autocast
from vqgpt.errors import UserError
from vqgpt.paths import cache_dir as vqgpt_cache
from vqgpt.progress import progress

log = logging.getLogger(__name__)  # scripts print it plainly (cli.py); Python callers configure logging

HEADER = "header.json"
FORMAT_VERSION = 2  # 2: the header records the data facts ("data")


def cache_dtype(num_codewords: int | None) -> np.dtype:
    """The smallest unsigned type that holds every index (uint16 up to K = 65536); float16 for continuous
    tokens (8-bit pixels in [-1, 1] survive it to within a tenth of a grey level)."""
    if num_codewords is None:
        return np.dtype(np.float16)
    return np.dtype(np.uint16) if num_codewords <= 2**16 else np.dtype(np.int32)


@torch.no_grad()
def build_token_cache(tokenizer_path: str | Path, data_cfg: DatasetConfig, cache_dir: str | Path, *,
                      hflip_copies: bool = False, batch_size: int = 256, device: str | torch.device = "cpu",
                      num_workers: int = 0, tokenizer_hash: str | None = None,
                      datasets: dict[str, Dataset] | None = None) -> Path:
    """Tokenize the train and test splits with the tokenizer checkpoint; written atomically to `cache_dir`.
    `tokenizer_hash`: its checkpoint_hash, when the caller has it already (it reads the whole weights file);
    `datasets`: the two splits, when the caller has built them already (train=False: no random flips)."""
    cache_dir = Path(cache_dir)
    tokenizer = load_checkpoint(tokenizer_path, expected_stage="tokenizer", map_location=device).model
    h, w = tokenizer.latent_grid
    dtype = cache_dtype(tokenizer.codebook_size)
    row_shape = (h * w,) if tokenizer.is_discrete else (h * w, tokenizer.token_dim)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sizes = {}
    try:
        datasets = datasets or splits(data_cfg)
        for split, dataset in datasets.items():
            flips = (False, True) if hflip_copies and split == "train" else (False,)
            n = len(dataset) * len(flips)
            tokens = np.lib.format.open_memmap(tmp / f"{split}_tokens.npy", mode="w+", dtype=dtype,
                                               shape=(n, *row_shape))
            labels = np.empty(n, dtype=np.int64)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            row = 0
            for images, y in progress(loader, desc=f"tokenizing {split}"):
                images = images.to(device)
                for copy, flip in enumerate(flips):  # the flipped copy of item i is row i + len(dataset)
                    start = row + copy * len(dataset)
                    with autocast(images.device, "auto"):  # as the tokenizer trained (bf16 on a GPU that has it)
                        codes = tokenizer.tokenize(images.flip(-1) if flip else images)
                    tokens[start:start + len(images)] = codes.reshape(len(images), *row_shape).cpu().numpy()
                    labels[start:start + len(images)] = y.numpy()
                row += len(images)
            tokens.flush()
            del tokens
            np.save(tmp / f"{split}_labels.npy", labels)
            sizes[split] = n
        header = {
            "format_version": FORMAT_VERSION,
            "tokenizer_hash": tokenizer_hash or checkpoint_hash(tokenizer_path),
            "tokenizer_path": str(Path(tokenizer_path).resolve()),
            "grid": [h, w],
            "codebook_size": tokenizer.codebook_size,
            "token_dim": tokenizer.token_dim,
            "dtype": dtype.name,
            "hflip_copies": hflip_copies,
            "splits": sizes,
            "data_config": dataclasses.asdict(data_cfg),
            "files": {split: files_fingerprint(dataset) for split, dataset in datasets.items()},
            "data": dataset_info(data_cfg, datasets["train"]),  # what a GPT checkpoint records of its data
        }
        (tmp / HEADER).write_text(json.dumps(header, indent=2) + "\n")
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def _remove_stale_builds(cache_dir: Path) -> None:
    """Delete temp dirs of builds whose process is gone (a killed build leaves `.name.tmp-<pid>`)."""
    for tmp in cache_dir.parent.glob(f".{cache_dir.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read_header(cache_dir: str | Path, tokenizer_path: str | Path | None = None, *,
                tokenizer_hash: str | None = None) -> dict:
    """The cache's header, checked against the tokenizer checkpoint that should have made it (its
    checkpoint_hash may be given, saving a read of the weights)."""
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
        expected = tokenizer_hash or checkpoint_hash(tokenizer_path)
        if header["tokenizer_hash"] != expected:
            raise UserError(f"token cache {cache_dir} was made by another tokenizer ({header['tokenizer_path']}, "
                            f"weights {header['tokenizer_hash']}), not {tokenizer_path} (weights {expected}); "
                            f"delete the cache or point cache_dir elsewhere to rebuild it")
    return header


class TokenDataset(Dataset):
    """One split of a token cache: (tokens (h*w,) long or patches (h*w, D) float, label) pairs, memory-mapped."""

    def __init__(self, cache_dir: str | Path, split: str):
        cache_dir = Path(cache_dir)
        try:
            self.tokens = np.load(cache_dir / f"{split}_tokens.npy", mmap_mode="r")
            self.labels = np.load(cache_dir / f"{split}_labels.npy")
        except (OSError, ValueError, EOFError) as e:  # missing or truncated arrays
            raise UserError(f"token cache {cache_dir}: {split} arrays are missing or damaged ({e}); delete "
                            f"{cache_dir} to rebuild it") from None
        if len(self.tokens) != len(self.labels):
            raise UserError(f"token cache {cache_dir}: {split} has {len(self.tokens)} token rows but "
                            f"{len(self.labels)} labels; delete {cache_dir} to rebuild it")
        # what a row becomes: float32 patches from float16, int64 indices from the unsigned index types
        self.row_dtype = np.float32 if self.tokens.dtype == np.float16 else np.int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.tokens[i].astype(self.row_dtype)), int(self.labels[i])


def cache_key(tokenizer_hash: str, data_cfg: DatasetConfig, hflip_copies: bool) -> str:
    """The default cache's name: readable data name + a hash of everything that changes the tokens."""
    facts = {"tokenizer": tokenizer_hash, "data": config_facts(data_cfg), "hflip_copies": hflip_copies,
             "format": FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{data_cfg.name}_{data_cfg.image_size}_{digest}"


def default_cache_dir(tokenizer_path: str | Path, data_cfg: DatasetConfig, hflip_copies: bool, *,
                      tokenizer_hash: str | None = None) -> Path:
    """In vqgpt's cache, keyed on the tokenizer's weights and the full data config."""
    key = cache_key(tokenizer_hash or checkpoint_hash(tokenizer_path), data_cfg, hflip_copies)
    return vqgpt_cache("tokens", key)


def eval_split(header: dict) -> str:
    """The split of a token cache that training reports on: "val" when the data holds images out, else "test"."""
    return "val" if "val" in header["splits"] else "test"


def splits(data_cfg: DatasetConfig) -> dict[str, Dataset]:
    """The splits a token cache is made of: train, val (when images are held out) and test (train=False: no
    random flips)."""
    names = ("train", "val", "test") if data_cfg.val_size else ("train", "test")
    return {split: build_dataset(data_cfg, split, train=False) for split in names}


def _mismatch(header: dict, data_cfg: DatasetConfig, hflip_copies: bool, files: dict) -> str | None:
    """What differs between a cache's header and the request (config, or the image files now), or None."""
    saved = {"val_size": 0, **(header.get("data_config") or {})}  # val_size: caches made before it existed
    wanted = dataclasses.asdict(data_cfg)
    diff = [f"dataset.{k}={saved.get(k)!r} there, {wanted[k]!r} asked" for k in wanted if saved.get(k) != wanted[k]]
    if header.get("hflip_copies") != hflip_copies:
        diff.append(f"hflip_copies={header.get('hflip_copies')} there, {hflip_copies} asked")
    was = header.get("files") or {}
    for split, now in files.items():
        if was.get(split) != now:
            count = f"{was[split]['files']} files then, {now['files']} now" if was.get(split) and now else \
                "not recorded then" if now else "recorded then, none now"
            diff.append(f"the {split} split's image files changed ({count})")
    return "; ".join(diff[:3]) or None


def _check_arrays(cache: Path, header: dict) -> str | None:
    """What is wrong with the cache's arrays (missing, truncated, wrong row count), or None."""
    for split, n in header.get("splits", {}).items():
        try:
            rows = len(TokenDataset(cache, split))
        except UserError as e:
            return str(e).removeprefix(f"token cache {cache}: ")
        if rows != n:
            return f"{split} holds {rows} rows, its header says {n}; delete {cache} to rebuild it"
    return None


def prepare_token_cache(tokenizer_path: str | None, data_cfg: DatasetConfig | None, cache_dir: str | None,
                        hflip_copies: bool = False, device: str | torch.device = "cpu") -> tuple[Path, dict]:
    """Open the cache for this tokenizer and data, building it first if missing; the data config defaults to
    the one stored in the tokenizer checkpoint. A stale default cache is rebuilt (saying why); a stale
    `cache_dir` you named is refused. Returns (cache_dir, header)."""
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
    named = cache_dir is not None
    tokenizer_hash = checkpoint_hash(tokenizer_path)  # reads the weights once for every check below
    cache = Path(cache_dir) if named else default_cache_dir(tokenizer_path, data_cfg, hflip_copies,
                                                              tokenizer_hash=tokenizer_hash)
    _remove_stale_builds(cache)
    datasets = splits(data_cfg)  # scanned once: a folder's files are compared with what the cache was made of
    files = {split: files_fingerprint(dataset) for split, dataset in datasets.items()}
    if (cache / HEADER).exists():
        header = read_header(cache, tokenizer_path, tokenizer_hash=tokenizer_hash)
        mismatch = _mismatch(header, data_cfg, hflip_copies, files)
        damage = None if mismatch else _check_arrays(cache, header)
        problem = mismatch or damage
        if problem is None:
            return cache, header
        if named and mismatch:
            raise UserError(f"token cache {cache} does not match this request ({mismatch}); delete it to rebuild "
                            "it, or point cache_dir elsewhere")
        if named:
            raise UserError(f"token cache {cache} is damaged: {damage}")
        log.info(f"token cache {cache} is stale ({problem}): rebuilding it")
    else:
        log.info(f"token cache {cache} is missing: tokenizing {data_cfg.name} once")
    build_token_cache(tokenizer_path, data_cfg, cache, hflip_copies=hflip_copies, device=device,
                      tokenizer_hash=tokenizer_hash, datasets=datasets)
    return cache, read_header(cache, tokenizer_path, tokenizer_hash=tokenizer_hash)
