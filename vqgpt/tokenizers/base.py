"""The Tokenizer interface: all the GPT stage, the token cache, sampling, GIFs, completion and evaluation may use.

    tokens = tokenizer.tokenize(images)       # (B, C, H, W) in [-1, 1] -> (B, h, w) long indices (no autograd)
    images = tokenizer.decode_tokens(tokens)  # (B, h, w) -> (B, C, H, W) in [-1, 1] (no autograd)
    (PIL, uint8 or [0, 1] images: vqgpt.images.to_model_space first; vqgpt.images.to_pil after)
    tokenizer.latent_grid                     # (h, w): the GPT's block_size is h * w
    tokenizer.codebook_size                   # K: the GPT's vocab_size (None for continuous tokens)
    tokenizer.image_size, tokenizer.channels, tokenizer.device
    tokenizer.checkpoint_meta()               # what its checkpoint's config.json records about it

How the other ways of writing images token by token fit, without touching the GPT stage:
- A pixel palette (Image GPT, Chen et al. 2020): each pixel is one token, the index of its nearest palette
  colour; `latent_grid` is (image_size, image_size), `codebook_size` the palette size, `decode_tokens` looks the
  colours up. Its training (k-means on pixels) is its `fit`.
- Continuous patches (PatchGPT): `codebook_size` is None and `token_dim` the patch vector's width P*P*C;
  `tokenize` returns (B, h, w, token_dim) floats and `decode_tokens` takes them back. The GPT stage reads
  `is_discrete` to swap the token embedding and softmax head for a linear projection and a regression head;
  the token cache stores float16 rows instead of indices.
A tokenizer is an `nn.Module` with a dataclass `config`, registered with `@register_model(arch, Config)` and
saved with stage "tokenizer", so `load_checkpoint` rebuilds it from its directory alone. A new kind is its config
dataclass (a `TokenizerConfig` subclass in vqgpt/config.py, collected by its `name`), its class here with
`@register_model`, and a YAML in configs/tokenizer/; train_tokenizer.py trains it on the engine (an autoencoder:
reconstruction, perceptual and GAN losses, plus its bottleneck's `loss`) unless it defines `fit`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Tokenizer(nn.Module):
    """Images <-> token grids. Subclasses set `config` and implement the abstract members below."""

    config: Any  # the implementation's config dataclass (saved as the checkpoint's model_config)
    # `fit(self, dataset, seed) -> str`: fit in place from the train split, no gradient steps, and say how in one
    # line (the pixel palette's k-means, the patch cutter's nothing); None: trained on the engine.
    fit: Any = None

    @property
    def image_size(self) -> int:
        """Side of the square images it takes and makes."""
        return self.config.image_size

    @property
    def channels(self) -> int:
        """Channels of its images: 1 (grayscale) or 3 (RGB)."""
        return self.config.in_channels

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(h, w) tokens per image, in raster order for the GPT."""
        raise NotImplementedError

    @property
    def codebook_size(self) -> int | None:
        """K, the number of distinct tokens; None when tokens are continuous vectors."""
        raise NotImplementedError

    @property
    def token_dim(self) -> int | None:
        """Width of a continuous token; None for discrete (index) tokens."""
        return None

    @property
    def is_discrete(self) -> bool:
        """True when tokens are indices in [0, codebook_size)."""
        return self.codebook_size is not None

    @property
    def pixels_per_token(self) -> int:
        """Image rows (and columns) one token covers: image_size // h."""
        return self.image_size // self.latent_grid[0]

    @property
    def device(self) -> torch.device:
        """Where its weights (and buffers) live; inputs go there."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> tokens (B, h, w) long (or (B, h, w, token_dim) float)."""
        raise NotImplementedError

    def check_images(self, images: torch.Tensor) -> None:
        """A TypeError/ValueError naming the fix for what tokenize cannot read (uint8 pixels, another layout);
        no values are read (no device sync), so [0, 1] floats pass: convert with vqgpt.images.to_model_space."""
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
            kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"images of {kind}: tokenize takes float (B, C, H, W) in [-1, 1]; convert PIL, uint8 or "
                            "[0, 1] images with vqgpt.images.to_model_space(images, channels)")
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images of shape {tuple(images.shape)}: tokenize takes (B, {self.channels}, H, W)")

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, h, w) (or (B, h*w), or continuous (B, h, w, token_dim)) -> images (B, C, H, W) in [-1, 1]."""
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        """The tokenizer facts its checkpoint records (config.json), beside the data's."""
        return {"codebook_size": self.codebook_size, "latent_grid": list(self.latent_grid)}
