"""Checkpoints: the file format. One directory per checkpoint, for every stage, that rebuilds its model from its
own files (the class comes from `vqgpt.registry`).

    model.safetensors  weights (no pickle; tied weights handled)
    ema.safetensors    optional exponential moving average of the same weights (`trainer.ema_decay`); loaded
                       instead of model.safetensors unless `ema=False`
    config.json        format version, stage, arch, resolved model config, data/stage facts, step, versions
    train_state.pt     optional optimizer/scheduler/RNG state, read with torch.load(weights_only=True)

A save writes a hidden temp sibling, then swaps it in by renames: a crash leaves the previous checkpoint
readable at `path`, or at `path.old` between the two renames (the loader falls back to it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights
from torch import nn

from vqgpt import registry
from vqgpt.config import dataclass_from_dict
from vqgpt.errors import UserError, one_line

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.pt"
ASIDE_SUFFIX = ".old"  # the previous checkpoint, while a save swaps the new one in

# config.json fields every checkpoint has, plus those each stage adds: a new stage is one more entry.
COMMON_FIELDS = ("dataset", "image_size", "channels", "num_classes", "class_names")
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("codebook_size", "latent_grid"),  # latent_grid: [h, w] tokens per image
    "gpt": ("vocab_size", "block_size"),
    "classifier": (),  # scores images of the common fields' size, channels and classes
    "gpt_classifier": ("tokenizer_hash",),  # classifies the token grids of that tokenizer (classify.py)
}
WRITTEN_HERE = ("format_version", "stage", "arch", "step", "model_config", "weights_sha256", "versions")
_FIX = "pass a checkpoint directory (config.json + model.safetensors) written by vqgpt"

@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode), its config.json, and the directory read."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path
    weights: str = "raw"  # which weights were loaded: raw (model.safetensors) or ema (ema.safetensors)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    stage: str,
    arch: str,
    meta: Mapping[str, Any],
    step: int,
    train_state: Mapping[str, Any] | None = None,
    ema: nn.Module | None = None,
) -> Path:
    """Atomically write `model` (config in `model.config`), meta, optional train state and optional EMA weights
    (a module of the same architecture) to dir `path`."""
    path = Path(path).expanduser()
    record = _build_record(model, stage, arch, meta, step)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.iterdir():  # left by a killed save (one writer per path)
        if stale.name.startswith(f".{path.name}.tmp-"):
            shutil.rmtree(stale, ignore_errors=True)
    # Not tempfile.mkdtemp: its 0o700 would make every checkpoint private to its writer.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    aside = path.with_name(path.name + ASIDE_SUFFIX)
    try:
        _write_files(tmp, model, record, train_state, ema)
        if path.exists() and aside.exists():
            shutil.rmtree(aside)  # a save killed before its cleanup left it; `path` is the good one
        if path.exists():
            os.replace(path, aside)
        os.replace(tmp, path)
        _fsync(path.parent)  # make the renames themselves durable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not path.exists():
            os.replace(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return path


def check_replaceable(path: Path, fix: str = "pick another path") -> None:
    """UserError unless a save may write `path`: missing, empty, or a checkpoint (never a user's file or folder)."""
    if path.is_file():
        raise UserError(f"{path} is a file, not a checkpoint directory; not replacing it, {fix}")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise UserError(f"{path} is a directory that is not a vqgpt checkpoint; not replacing it, {fix}")


def _build_record(model: nn.Module, stage: str, arch: str, meta: Mapping[str, Any], step: int) -> dict:
    """Check the save arguments (a caller bug: ValueError) and assemble config.json, minus the hash."""
    if stage not in STAGE_FIELDS:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_FIELDS)}")
    registry.check_model(model, arch)
    missing = [k for k in COMMON_FIELDS + STAGE_FIELDS[stage] if k not in meta]
    reserved = [k for k in meta if k in WRITTEN_HERE]
    if missing or reserved:
        raise ValueError(f"{stage} meta: missing {missing}; keys save_checkpoint writes itself {reserved}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    head = {"format_version": FORMAT_VERSION, "stage": stage, "arch": arch, "step": step}
    return {**head, "model_config": dataclasses.asdict(model.config), **meta, "versions": _versions()}


def _write_files(tmp: Path, model: nn.Module, record: dict, train_state: Mapping[str, Any] | None,
                 ema: nn.Module | None) -> None:
    # save_model (not save_file) drops the duplicate names of tied weights instead of failing on them.
    _save_weights(model, str(tmp / WEIGHTS_FILE))
    _fsync(tmp / WEIGHTS_FILE)
    record["weights_sha256"] = _sha256(tmp / WEIGHTS_FILE)
    if ema is not None:
        _save_weights(ema, str(tmp / EMA_FILE))
        _fsync(tmp / EMA_FILE)
        record["ema_sha256"] = _sha256(tmp / EMA_FILE)
    try:
        text = json.dumps(record, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:  # e.g. a DictConfig or a NaN in meta
        raise ValueError(f"config.json takes plain JSON only (to_container a DictConfig): {e}") from e
    (tmp / CONFIG_FILE).write_text(text + "\n")
    _fsync(tmp / CONFIG_FILE)
    if train_state is not None:
        torch.save(dict(train_state), tmp / TRAIN_STATE_FILE)
        _fsync(tmp / TRAIN_STATE_FILE)
        try:  # fail now, with the old checkpoint in place, rather than when resuming
            torch.load(tmp / TRAIN_STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"train_state takes tensors and plain containers only: {one_line(e)}") from e
    # safetensors creates its file 0600 whatever the umask; every file follows the user's umask instead, so a
    # checkpoint a team shares is readable as a whole (or private as a whole under umask 077).
    mode = 0o666 & ~_umask()
    for file in tmp.iterdir():
        file.chmod(mode)
    _fsync(tmp)


def _umask() -> int:
    """The process umask, read from /proc where it can be (os.umask can only read it by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # directories too (POSIX)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for package in ("vqgpt", "safetensors", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def resolve_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory to read: `path`, or `path.old` if a save died between its renames."""
    path = Path(path).expanduser()
    aside = path.with_name(path.name + ASIDE_SUFFIX)
    if not path.exists() and (aside / CONFIG_FILE).is_file():
        warnings.warn(f"{path} is missing; loading {aside}, left by an interrupted save", stacklevel=3)
        return aside
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; {_FIX}")
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        raise UserError(f"{path} is a file inside a checkpoint; pass its directory {path.parent}")
    if path.is_file():
        raise UserError(f"{path} is a file, not a vqgpt checkpoint (.pt/.ckpt files are not read); {_FIX}")
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"{path} is not a vqgpt checkpoint: it has no {CONFIG_FILE}; {_FIX}")
    return path


def _read_config(ckpt: Path, expected_stage: str | None) -> dict[str, Any]:
    file = ckpt / CONFIG_FILE
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({one_line(e)}); it is damaged, use another") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise UserError(f"{file} has no format_version: {ckpt} is not a vqgpt checkpoint; {_FIX}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{ckpt} has format {version}, newer than this vqgpt's {FORMAT_VERSION}; upgrade vqgpt"
        )
    stage = meta.get("stage")
    if expected_stage is not None and stage != expected_stage:
        raise UserError(
            f"{ckpt} is a {stage!r} checkpoint (arch {meta.get('arch')!r}), but a {expected_stage!r} "
            f"checkpoint is expected here; pass a {expected_stage} checkpoint directory"
        )
    if stage not in STAGE_FIELDS:
        raise UserError(f"{ckpt} has unknown stage {stage!r} (known: {', '.join(STAGE_FIELDS)}); upgrade")
    missing = [k for k in WRITTEN_HERE + COMMON_FIELDS + STAGE_FIELDS[stage] if k not in meta]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}; it is damaged, re-save it or use another")
    return meta


def read_meta(path: str | os.PathLike, *, expected_stage: str | None = None) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory, without loading weights."""
    return _read_config(resolve_dir(path), expected_stage)


def load_checkpoint(
    path: str | os.PathLike, *, expected_stage: str | None = None, map_location: str | torch.device = "cpu",
    ema: bool = True,
) -> Checkpoint:
    """Rebuild the model from the checkpoint alone (registry + config.json); load its weights strictly: the EMA
    weights when the checkpoint has them and `ema` is true, else the raw ones (`.weights` says which)."""
    ckpt = resolve_dir(path)
    meta = _read_config(ckpt, expected_stage)
    model_cls, config_cls = registry.lookup(meta["arch"], where=str(ckpt))
    version = meta["versions"].get("vqgpt") if isinstance(meta["versions"], dict) else None
    written_by = f"use the vqgpt that wrote it ({version})"
    try:
        config = dataclass_from_dict(config_cls, meta["model_config"], where="model_config")
    except UserError as e:
        if version == _versions()["vqgpt"]:  # this very code wrote it, so the file was edited or damaged
            raise UserError(f"{ckpt / CONFIG_FILE}: {e}; correct that value, or use another checkpoint") from None
        raise UserError(f"{ckpt}: model_config does not fit this code ({e}); {written_by}") from None
    if not (ckpt / WEIGHTS_FILE).is_file():
        raise UserError(f"{ckpt} has no {WEIGHTS_FILE}; the checkpoint is incomplete, use another")
    file = weights_file(ckpt, ema)
    device = torch.device(map_location)
    with device:  # build directly on the target device
        model = model_cls(config)
    try:
        missing, unexpected = _load_weights(model, file, strict=False, device=str(device))
    except SafetensorError as e:
        raise UserError(f"{file} is damaged ({one_line(e)}); use another checkpoint") from None
    except RuntimeError as e:  # a shape mismatch
        raise UserError(f"{file} does not load: {one_line(e)}; {written_by}") from None
    if missing or unexpected:
        raise UserError(
            f"{file} does not match {model_cls.__name__}: missing keys {_some(missing)}, "
            f"unexpected keys {_some(unexpected)}; {written_by}"
        )
    return Checkpoint(model=model.eval(), meta=meta, path=ckpt, weights="ema" if file.name == EMA_FILE else "raw")


def weights_file(ckpt: Path, ema: bool = True) -> Path:
    """The weights a load uses: the EMA file when there is one and `ema` is true, else model.safetensors."""
    return ckpt / EMA_FILE if ema and (ckpt / EMA_FILE).is_file() else ckpt / WEIGHTS_FILE


def load_model(
    path: str | os.PathLike, expected_stage: str | None = None, map_location: str | torch.device = "cpu",
    ema: bool = True,
) -> nn.Module:
    """The model of a checkpoint, rebuilt and strictly loaded (see load_checkpoint), in eval mode."""
    return load_checkpoint(path, expected_stage=expected_stage, map_location=map_location, ema=ema).model


def checkpoint_hash(path: str | os.PathLike) -> str:
    """Short sha256 of the weights a default load uses (EMA when present): tells apart token caches made by
    different tokenizers."""
    return _sha256(weights_file(resolve_dir(path)))[:16]


def _some(keys: list[str], n: int = 4) -> str:
    keys = sorted(keys)
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"
