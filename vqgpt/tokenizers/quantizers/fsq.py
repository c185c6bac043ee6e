"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of len(levels) channels is bounded and rounded to one of levels[i] values; the codebook is the implicit
grid of K = prod(levels) points, so there is no codebook to learn, no codebook loss and nothing to collapse.
Same interface and usage metrics as `VectorQuantize` (vq.py); keyword arguments take `FSQConfig`'s defaults:

    fsq = FSQ(levels=[8, 5, 5, 5], embedding_dim=64)   # K = 1000
"""

from __future__ import annotations

import dataclasses
import math

import torch
from einops import rearrange
from torch import Tensor, nn

from vqgpt.config import FSQConfig
from vqgpt.errors import ArgumentError
from vqgpt.tokenizers.quantizers.base import Quantizer, QuantizerOutput


def check_fsq_config(cfg: FSQConfig) -> None:
    """Raise an ArgumentError (a ValueError) naming the argument and the fix for a bad FSQ setting."""
    if len(cfg.levels) < 1 or min(cfg.levels) < 2:
        raise ArgumentError("levels", list(cfg.levels), "need >= 1 channel, each >= 2 levels")
    for key in ("embedding_dim", "usage_window"):
        if getattr(cfg, key) < 1:
            raise ArgumentError(key, getattr(cfg, key), "must be >= 1")


class FSQ(Quantizer):
    """Finite scalar quantizer: project d -> len(levels), bound, round per channel, project back."""

    def __init__(self, config: FSQConfig | None = None, **kwargs):
        cfg = dataclasses.replace(config or FSQConfig(), **kwargs)  # keyword arguments override the config
        check_fsq_config(cfg)
        super().__init__(math.prod(cfg.levels), cfg.usage_window)
        self.cfg = cfg
        d, L = cfg.embedding_dim, len(cfg.levels)
        self.in_proj = nn.Linear(d, L) if d != L else nn.Identity()
        self.out_proj = nn.Linear(L, d) if d != L else nn.Identity()
        levels = torch.tensor(cfg.levels)
        # Derived from the config, so not saved: mixed-radix place values and each channel's half-width.
        self.register_buffer("levels", levels, persistent=False)
        basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0)  # (1, l0, l0 * l1, ...)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("half_width", levels // 2, persistent=False)

    def _bound(self, z: Tensor) -> Tensor:
        """Squash each channel so rounding gives exactly levels[i] integers (FSQ, App. A.1).

        Even levels are shifted by half a step, so that z = 0 still maps to 0 and the grid stays centred."""
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = (self.levels % 2 == 0).float() * 0.5
        return torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset

    def _digits(self, z: Tensor) -> Tensor:
        """(B, D, H, W) -> integer grid coordinates in [-half_width, levels - 1 - half_width], (B, H, W, L)"""
        bounded = self._bound(self.in_proj(rearrange(z, "b d h w -> b h w d")).float())
        if not bounded.requires_grad:
            return bounded.round()
        return bounded + (bounded.round() - bounded).detach()  # straight-through rounding (FSQ, Sec. 3)

    def _to_indices(self, digits: Tensor) -> Tensor:
        """Grid coordinates (..., L) -> mixed-radix indices (...), long."""
        return ((digits.detach().round().long() + self.half_width) * self.basis).sum(-1)

    def _to_output(self, digits: Tensor) -> Tensor:
        """Grid coordinates (B, H, W, L) -> z_q (B, D, H, W); codes are scaled into [-1, 1]."""
        return rearrange(self.out_proj(digits / self.half_width), "b h w d -> b d h w")

    @torch.no_grad()
    def _quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, H, W) -> code indices (B, H, W), long."""
        return self._to_indices(self._digits(z))

    def _dequantize(self, indices: Tensor) -> Tensor:
        """Code indices (B, H, W) -> quantized latents (B, D, H, W)."""
        digits = (indices[..., None] // self.basis) % self.levels - self.half_width  # (B, H, W, L)
        return self._to_output(digits.float())

    def _forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize latents (B, D, H, W); no loss (zero); in training mode, count codebook usage."""
        digits = self._digits(z)  # (B, H, W, L)
        indices = self._to_indices(digits)  # (B, H, W)
        metrics = self._metrics(self._count(indices), self._dead_mask())
        if self.training:
            self.step += 1
        z_q = self._to_output(digits).to(z.dtype)  # (B, D, H, W)
        return QuantizerOutput(z_q, indices, z.new_zeros((), dtype=torch.float32), metrics)
