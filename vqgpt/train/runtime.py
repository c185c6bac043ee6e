"""What every training loop sets up first: device, CPU threads, autocast, seeds."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vqgpt.checkpoint import (
    CONFIG_FILE,
    TRAIN_STATE_FILE,
    check_replaceable,
    dataclass_from_dict,
    load_checkpoint,
    load_train_state,
)
from vqgpt.config import TrainerConfig
from vqgpt.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` = CUDA when available, else CPU; an unavailable explicit choice is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device={name!r} is not a device name ({e}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} asked for CUDA but none is available here; use device=cpu or auto")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """`trainer.precision`: auto = bf16 autocast on CUDA, fp32 on CPU (where bf16 autocast measured slower,
    docs/training.md); bf16 = bf16 autocast on either; fp32 = off."""
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"trainer.precision={precision!r} is not one of auto, bf16, fp32")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(num_threads: int | None) -> None:
    """torch's intra-op CPU threads (`trainer.num_threads`); None keeps torch's choice (one per core).

    On a small machine shared with other work, one thread per process avoids the 3-6x slowdown of threads
    fighting for a busy core (docs/demo.md has the measurements)."""
    if num_threads is None:
        return
    if num_threads < 1:
        raise UserError(f"trainer.num_threads={num_threads} must be >= 1, or null for torch's choice")
    torch.set_num_threads(num_threads)


def check_trainer(t: TrainerConfig) -> None:
    """Refuse trainer settings that would fail (or spin) later, naming the key and the fix, before step 1."""
    for key in ("batch_size", "grad_accum", "log_every", "eval_every", "sample_and_save_freq",
                "checkpoint_every", "max_bad_steps"):
        value = getattr(t, key)
        if value < 1:
            raise UserError(f"trainer.{key}={value} must be a positive integer")
    for key in ("max_steps", "warmup_steps", "num_workers"):
        if getattr(t, key) < 0:
            raise UserError(f"trainer.{key}={getattr(t, key)} must be >= 0")
    if t.lr <= 0 or t.min_lr < 0:
        raise UserError(f"trainer.lr={t.lr} must be > 0 and trainer.min_lr={t.min_lr} >= 0")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise UserError(f"trainer.grad_clip={t.grad_clip} must be > 0, or null for off")
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        raise UserError(f"trainer.ema_decay={t.ema_decay} must be in (0, 1), e.g. 0.999, or null for no EMA")


def check_batch_fits(t: TrainerConfig, train_size: int) -> None:
    """A batch larger than the training split would never fill (drop_last): refuse it rather than spin."""
    if t.batch_size > train_size:
        raise UserError(f"trainer.batch_size={t.batch_size} is larger than the {train_size} training images; "
                        f"lower it to at most {train_size}")


def check_checkpoint_target(path: Path) -> None:
    """Refuse, before the first step, a checkpoint path the first save could not replace."""
    check_replaceable(path, fix="move it away or set out_dir=... elsewhere")


def resume_from(path: str, model: nn.Module, stage: str) -> dict[str, Any]:
    """Load a run's weights into `model` and return its train state; one-line errors for another
    architecture or a missing/damaged train state, before anything is overwritten.

    The weights decide what "another architecture" is (names and shapes); the message names the config keys
    that differ. Keys that leave the weights alone (loss weights, dropout, ...) may change on resume: a note says
    which."""
    ckpt = load_checkpoint(path, expected_stage=stage, ema=False)  # training continues from the raw weights
    ours, theirs = _flat(dataclasses.asdict(model.config)), _flat(ckpt.meta["model_config"])
    differ = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]

    def said(key: str) -> str:
        return f"{stage}.{key}={_show(ours.get(key))} where the checkpoint has {_show(theirs.get(key))}"

    shapes, saved = _shapes(model), _shapes(ckpt.model)
    if shapes != saved:
        diff = [said(k) for k in _keys_that_shape(model, theirs, differ)]
        if not diff:  # same config, other weights: another code version built it
            diff = [f"weights {k} of shape {shapes.get(k)} where the checkpoint has {saved.get(k)}"
                    for k in sorted(set(shapes) | set(saved)) if shapes.get(k) != saved.get(k)]
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise UserError(f"resume={path} is another {stage} architecture: {', '.join(diff[:3])}{more}; resume with "
                        f"the config it was trained with (its {CONFIG_FILE}), or drop resume= to start a fresh run")
    if differ:
        print(f"resume: continuing {path} with {', '.join(said(k) for k in differ)}")
    state = load_train_state(path)
    if state is None:
        raise UserError(f"resume={path} holds weights but no {TRAIN_STATE_FILE} (optimizer, step, RNG), so training "
                        "cannot continue exactly; drop resume= to start a fresh run (the weights stay usable for "
                        "sampling and evaluation)")
    model.load_state_dict(ckpt.model.state_dict())
    return state


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every weight's and buffer's shape, by name."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _keys_that_shape(model: nn.Module, theirs: dict[str, Any], keys: list[str]) -> list[str]:
    """Of the differing config keys, those whose checkpoint value alone changes the weights' shapes (tried on the
    meta device: no memory, no compute), so the error names channels, not a loss weight; all when unsure."""
    mine = dataclasses.asdict(model.config)
    try:
        with torch.device("meta"):
            reference = _shapes(type(model)(dataclass_from_dict(type(model.config), mine)))
    except Exception:  # a model that cannot be built on the meta device: name every difference
        return keys
    shaping = []
    for key in keys:
        variant = copy.deepcopy(mine)
        *parents, leaf = key.split(".")
        node = variant
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = theirs.get(key)
        try:
            with torch.device("meta"):
                changed = _shapes(type(model)(dataclass_from_dict(type(model.config), variant))) != reference
        except Exception:  # not buildable with only this key changed: it is tied to the shapes
            changed = True
        if changed:
            shaping.append(key)
    return shaping or keys


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"quantizer.num_codewords": 1024, ...}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    """A config value as typed on the command line (`null`, `[1,2]`)."""
    return "null" if value is None else str(value).replace(" ", "") if isinstance(value, list) else str(value)
