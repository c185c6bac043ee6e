"""What every training loop sets up first: checked trainer settings and seeds (autocast: vqgpt.device)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from vqgpt.checkpoint import check_replaceable
from vqgpt.config import TrainerConfig
from vqgpt.errors import UserError
from vqgpt.train.state import BEST_DIRECTION


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_trainer(t: TrainerConfig) -> None:
    """Refuse trainer settings that would fail (or spin) later, naming the key and the fix, before step 1."""
    for key in ("batch_size", "grad_accum", "log_every", "eval_every", "sample_every",
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
    if t.keep_best is not None and t.keep_best not in BEST_DIRECTION:
        raise UserError(f"trainer.keep_best={t.keep_best} is not a metric vqgpt knows the better direction of; use "
                        f"one of {', '.join(sorted(BEST_DIRECTION))}, or null")
    if t.early_stop < 0 or (t.early_stop and t.keep_best is None):
        raise UserError(f"trainer.early_stop={t.early_stop} needs trainer.keep_best (the metric to watch, e.g. "
                        "keep_best=loss) and must be >= 0 (0 = never stop early)")


def check_batch_fits(t: TrainerConfig, train_size: int) -> None:
    """A batch larger than the training split would never fill (drop_last): refuse it rather than spin."""
    if t.batch_size > train_size:
        raise UserError(f"trainer.batch_size={t.batch_size} is larger than the {train_size} training images; "
                        f"lower it to at most {train_size}")


def check_checkpoint_target(path: Path) -> None:
    """Refuse, before the first step, a checkpoint path the first save could not replace."""
    check_replaceable(path, fix="move it away or set out_dir=... elsewhere")
