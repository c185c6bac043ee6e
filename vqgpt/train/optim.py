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


# Layers whose weight is a transformation to regularise; every other parameter (biases, norm gains, embedding
# tables, VQ codebooks) holds values that are looked up or added, which weight decay would only shrink.
DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def decay_groups(modules: nn.Module | Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters: only the weights of Linear and conv layers are decayed;
    a weight shared with an embedding (a tied output head) counts as the embedding. Each parameter once."""
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    params: dict[int, nn.Parameter] = {}
    decayed: set[int] = set()
    lookup: set[int] = set()  # embeddings: tables of codes, never decayed even when tied to a Linear
    for module in modules:
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                params.setdefault(id(p), p)
                if isinstance(sub, nn.Embedding):
                    lookup.add(id(p))
                elif isinstance(sub, DECAYED_LAYERS) and name == "weight":
                    decayed.add(id(p))
    decay = [p for i, p in params.items() if i in decayed and i not in lookup]
    no_decay = [p for i, p in params.items() if i not in decayed or i in lookup]
    return decay, no_decay


def adamw(modules: nn.Module | Iterable[nn.Module], *, lr: float, betas: tuple[float, float] | list[float],
          weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on Linear and conv weights only (minGPT's `configure_optimizers` rule): not on
    biases, norms, embeddings or VQ codebooks. Tied weights are stepped once. `fused`: one fused kernel per
    step (`trainer.fused_adamw`, on CUDA); else torch's multi-tensor (foreach) path."""
    decay, no_decay = decay_groups(modules)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
