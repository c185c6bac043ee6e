"""Image GPT's pixel palette (Chen et al. 2020, "Generative Pretraining from Pixels"): one token per pixel.

    tokenizer = PixelTokenizer(PixelConfig(in_channels=1, image_size=28))  # auto: 16 grey levels
    tokens = tokenizer.tokenize(images)        # (B, C, H, W) in [-1, 1] -> (B, H, W): nearest palette colour
    images = tokenizer.decode_tokens(tokens)   # the palette's colours back, (B, C, H, W)

The palette is either evenly spaced levels per channel (`uniform`: 16 grey levels is the 4-bit MNIST setting of
small iGPT reproductions) or colours fitted by k-means to the training pixels (`kmeans`: iGPT's 512-colour RGB
palette). `fit_palette` fits the latter; `train_tokenizer.py tokenizer=pixel` calls it, in seconds.

A pixel GPT's context is every pixel: 784 tokens at 28x28, 1,024 at 32x32, 4,096 at 64x64. Attention grows with
its square, so past 32x32 use a VQ-GAN (16x fewer tokens at f=4) or downsample the images, as iGPT did.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vqgpt.config import PixelConfig
from vqgpt.errors import ArgumentError, UserError
from vqgpt.registry import register_model
from vqgpt.tokenizers.base import Tokenizer

PALETTES = ("uniform", "kmeans")


def resolve_pixel_config(cfg: PixelConfig) -> PixelConfig:
    """`auto` and null filled in (uniform 16 greys, or 512 k-means colours for RGB), then checked: a UserError
    names the key and the fix."""
    rgb = cfg.in_channels == 3
    palette = ("kmeans" if rgb else "uniform") if cfg.palette == "auto" else cfg.palette
    num_colors = cfg.num_colors if cfg.num_colors is not None else (512 if rgb else 16)
    def bad(message: str) -> ArgumentError:
        return ArgumentError("", message=message)

    if cfg.in_channels not in (1, 3):
        raise bad(f"§in_channels={cfg.in_channels}: the pixel palette takes grayscale (1) or RGB (3)")
    if palette not in PALETTES:
        raise bad(f"§palette={cfg.palette!r} is not one of auto, {', '.join(PALETTES)}")
    if not 2 <= num_colors <= 2**16:
        raise bad(f"§num_colors={num_colors} must be in 2..65536")
    if palette == "uniform" and rgb and round(num_colors ** (1 / 3)) ** 3 != num_colors:
        raise bad(f"§num_colors={num_colors}: a uniform RGB palette has levels**3 colours (8, 27, 64, 125, 216, 343, "
                  "512); pick one of those, or §palette=kmeans")
    if cfg.fit_pixels < num_colors or cfg.kmeans_iters < 1:
        raise bad(f"§fit_pixels={cfg.fit_pixels} must be >= num_colors={num_colors} and §kmeans_iters="
                  f"{cfg.kmeans_iters} >= 1")
    return dataclasses.replace(cfg, palette=palette, num_colors=num_colors)


def uniform_palette(num_colors: int, channels: int) -> torch.Tensor:
    """(num_colors, channels) evenly spaced levels in [-1, 1] per channel, every combination for RGB."""
    levels = round(num_colors ** (1 / channels))
    axis = torch.linspace(-1.0, 1.0, levels)
    return torch.cartesian_prod(*[axis] * channels).view(-1, channels)


@register_model("pixel", PixelConfig)
class PixelTokenizer(Tokenizer):
    """Each pixel -> the index of its nearest palette colour (squared distance); tokens -> the colours."""

    def __init__(self, config: PixelConfig):
        super().__init__()
        config = resolve_pixel_config(config)  # `auto` and null filled in, checked (a saved config is resolved)
        self.config = config
        self.register_buffer("palette", uniform_palette(config.num_colors, config.in_channels)
                             if config.palette == "uniform" else torch.zeros(config.num_colors, config.in_channels))

    def fit(self, dataset: Dataset, seed: int) -> str:
        """Fit the palette to `dataset` (k-means; a uniform one has nothing to fit); says what it did."""
        cfg, start = self.config, time.perf_counter()
        fit_palette(self, dataset, seed)
        return f"{cfg.palette} palette of {cfg.num_colors} colours" + (
            f", k-means on {cfg.fit_pixels} train pixels in {time.perf_counter() - start:.1f} s"
            if cfg.palette == "kmeans" else "")

    @property
    def latent_grid(self) -> tuple[int, int]:
        return self.config.image_size, self.config.image_size

    @property
    def codebook_size(self) -> int:
        return self.config.num_colors

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        batch, channels, height, width = images.shape
        if channels != self.channels:
            raise ValueError(f"expected {self.channels}-channel images, got {channels}")
        pixels = images.permute(0, 2, 3, 1).reshape(-1, channels).to(self.palette)  # (B*H*W, C)
        return nearest(pixels, self.palette).view(batch, height, width)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens.reshape(-1, *self.latent_grid).to(self.palette.device)
        return self.palette[grid].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """(N,) index of each point's (N, C) nearest centroid (K, C), in chunks so that N x K distances stay small."""
    out = torch.empty(len(points), dtype=torch.long, device=points.device)
    for start in range(0, len(points), chunk):
        out[start:start + chunk] = torch.cdist(points[start:start + chunk], centroids).argmin(dim=1)
    return out


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """(k, C) centroids: k-means++ seeding (Arthur & Vassilvitskii 2007), then Lloyd iterations; an empty
    cluster takes the point farthest from its centroid."""
    centroids = points[torch.randint(len(points), (1,), generator=generator)]
    closest = torch.cdist(points, centroids).squeeze(1).square()  # (N,) squared distance to the nearest seed
    for _ in range(1, k):
        pick = torch.multinomial(closest + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
        closest = torch.minimum(closest, (points - points[pick]).square().sum(1))
    for _ in range(iters):
        assign = nearest(points, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        for empty in (counts == 0).nonzero().flatten().tolist():
            far = (points - centroids[assign]).square().sum(1).argmax()
            centroids[empty] = points[far]
            assign[far] = empty
    return centroids


def sample_pixels(dataset: Dataset, num: int, generator: torch.Generator, max_images: int = 1024) -> torch.Tensor:
    """Up to (num, C) pixels: the same number from each of up to `max_images` random images of `dataset`."""
    images = torch.randperm(len(dataset), generator=generator)[:max_images]
    pixels = []
    for batch, _ in DataLoader(Subset(dataset, images.tolist()), batch_size=256):
        flat = batch.permute(0, 2, 3, 1).flatten(1, 2)  # (B, H*W, C)
        per_image = min(math.ceil(num / len(images)), flat.shape[1])
        picks = torch.rand(flat.shape[:2], generator=generator).argsort(dim=1)[:, :per_image]  # (B, per_image)
        pixels.append(flat.gather(1, picks[..., None].expand(-1, -1, flat.shape[2])).flatten(0, 1))
    return torch.cat(pixels)[:num]


def fit_palette(tokenizer: PixelTokenizer, dataset: Dataset, seed: int) -> None:
    """Fit a kmeans palette to `dataset`'s pixels in place (sorted dark to light); a uniform one needs nothing."""
    cfg = tokenizer.config
    if cfg.palette != "kmeans":
        return
    generator = torch.Generator().manual_seed(seed)
    pixels = sample_pixels(dataset, cfg.fit_pixels, generator)
    if len(torch.unique(pixels, dim=0)) < cfg.num_colors:
        raise UserError(f"the train split's pixels hold fewer than tokenizer.num_colors={cfg.num_colors} distinct "
                        "colours; lower num_colors or use tokenizer.palette=uniform")
    centroids = kmeans(pixels, cfg.num_colors, cfg.kmeans_iters, generator)
    tokenizer.palette.copy_(centroids[centroids.mean(dim=1).argsort()])
