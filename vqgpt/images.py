"""Saving image grids: tensors in [-1, 1] to PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Map model-space images in [-1, 1] to [0, 1] for saving."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> Path:
    """Save a batch (B, C, H, W) in [-1, 1] as one PNG grid, `nrow` images per row (default: square)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(make_grid(to_unit(images), nrow=nrow, padding=padding, pad_value=1.0), path)
    return path
