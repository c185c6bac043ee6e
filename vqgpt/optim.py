"""Optimizer set-up and the learning-rate schedule shared by both training stages."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (nanoGPT's schedule)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def adamw(modules: nn.Module | Iterable[nn.Module], *, lr: float, betas: tuple[float, float] | list[float],
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only (not biases, norms, embeddings' 1-d params).

    Decaying gains and biases only hurts (nanoGPT `configure_optimizers`); parameters are de-duplicated so
    tied weights are stepped once.
    """
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    seen: set[int] = set()
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in decay + no_decay) and bool(decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
