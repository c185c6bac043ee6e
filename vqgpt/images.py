"""Images between the outside world and the models: PIL / uint8 / [0, 1] in, the models' [-1, 1] tensors, and back
out as PNG grids or PIL images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Map model-space images in [-1, 1] to [0, 1] for saving."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Model-space images (B, C, H, W) in [-1, 1] as PIL images (mode L for one channel, RGB for three)."""
    pixels = to_unit(images).mul(255).round().byte().permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def to_model_space(images: torch.Tensor | Image.Image | Sequence[Image.Image], channels: int) -> torch.Tensor:
    """What a tokenizer takes, (B, C, H, W) float in [-1, 1], from PIL images, a uint8 tensor (0..255), or a float
    tensor in [0, 1] (diffusers' convention) or already in [-1, 1] (said with a negative value somewhere)."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        mode = "L" if channels == 1 else "RGB"
        arrays = [np.asarray(image.convert(mode)) for image in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"images: the PIL images differ in size ({sorted({a.shape[:2] for a in arrays})}); "
                             "resize them to the tokenizer's image_size first")
        images = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), *arrays[0].shape[:2], -1).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be PIL images or a (B, C, H, W) tensor, not {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"images of shape {tuple(images.shape)}: the tokenizer takes (B, {channels}, H, W)")
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.dtype.is_floating_point:
        raise TypeError(f"images of dtype {images.dtype}: pass uint8 (0..255) or float ([0, 1] or [-1, 1])")
    low, high = float(images.min()), float(images.max())
    if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
        raise ValueError(f"float images span [{low:.3g}, {high:.3g}]: pass [0, 1] or [-1, 1] (or uint8 0..255)")
    return images.float() if low < 0 else images.float() * 2 - 1


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> Path:
    """Save a batch (B, C, H, W) in [-1, 1] as one PNG grid, `nrow` images per row (default: square)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(make_grid(to_unit(images), nrow=nrow, padding=padding, pad_value=1.0), path)
    return path
