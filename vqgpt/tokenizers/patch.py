"""Continuous tokens: non-overlapping P x P patches, each flattened to one vector (the PatchGPT way of writing
images token by token without a codebook).

    tokenizer = PatchTokenizer(PatchConfig(in_channels=1, image_size=28, patch_size=4))
    tokens = tokenizer.tokenize(images)       # (B, C, H, W) -> (B, H/P, W/P, P*P*C) floats, nothing lost
    images = tokenizer.decode_tokens(tokens)  # the exact inverse

There is nothing to learn: `train_tokenizer.py tokenizer=patch` only records it (with its data) as a
checkpoint, so the GPT stage finds it like any other tokenizer. The GPT reads `is_discrete` (False here) and
predicts each next patch with a regression head instead of a softmax (vqgpt/models/patch_gpt.py).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch.utils.data import Dataset

from vqgpt.config import PatchConfig
from vqgpt.errors import ArgumentError
from vqgpt.registry import register_model
from vqgpt.tokenizers.base import Tokenizer


@register_model("patch", PatchConfig)
class PatchTokenizer(Tokenizer):
    """Images <-> grids of patch vectors, in raster order of patches, each patch (P, P, C) flattened."""

    def __init__(self, config: PatchConfig):
        super().__init__()
        if config.patch_size < 1 or config.image_size % config.patch_size:
            raise ArgumentError("", message=f"§patch_size={config.patch_size} must divide "
                                            f"§image_size={config.image_size}")
        self.config = config

    def fit(self, dataset: Dataset, seed: int) -> str:
        """Nothing to learn: patches are cut and joined by the config alone."""
        return f"{self.config.patch_size}x{self.config.patch_size} patches: nothing to fit"

    @property
    def latent_grid(self) -> tuple[int, int]:
        side = self.config.image_size // self.config.patch_size
        return side, side

    @property
    def codebook_size(self) -> None:
        return None

    @property
    def token_dim(self) -> int:
        return self.config.patch_size ** 2 * self.config.in_channels

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        return rearrange(images, "b c (h p) (w q) -> b h w (p q c)", p=self.config.patch_size, q=self.config.patch_size)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.latent_grid
        tokens = tokens.reshape(-1, h, w, self.token_dim)  # (B, h*w, D) too
        return rearrange(tokens, "b h w (p q c) -> b c (h p) (w q)", p=self.config.patch_size,
                         q=self.config.patch_size)

    def checkpoint_meta(self) -> dict:
        return {**super().checkpoint_meta(), "token_dim": self.token_dim}
