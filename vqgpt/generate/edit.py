"""Editing, in memory: re-draw a region of real images and keep the rest (inpainting, outpainting, a region
re-drawn as another class), through the Tokenizer interface.

    region = box_region([8, 8, 24, 24], image_size=32)                  # (H, W) bool pixels, or a mask PNG's
    images, cells = edit_images(models, images, region, cond, num=4, s=SamplingOptions())

The models work on the tokenizer's grid, so a pixel region becomes the token cells it touches: a token is drawn
anew when any pixel of its cell (pixels_per_token square) is in the region. A masked GPT (gpt.name=maskgit)
draws exactly those tokens, with everything else as context on all sides. A raster GPT can only continue a
prefix: it keeps the tokens before the region's first one in raster order and draws everything after it
(docs/masked.md). The decoder spreads each token over more than its cell, so the pictures are stitched: outside
the re-drawn cells every pixel is the tokenizer's reconstruction of the input, inside them the decoded edit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqgpt.config import SamplingOptions
from vqgpt.errors import UserError
from vqgpt.generate.pipeline import Models, decode, draw_tokens


def mask_region(mask: Image.Image) -> torch.Tensor:
    """A mask image as a (H, W) bool region: every pixel that is not black is re-drawn."""
    return torch.from_numpy(np.asarray(mask.convert("L")) > 0)


def box_region(box: list[int], image_size: int) -> torch.Tensor:
    """(H, W) bool, True inside the box [x0, y0, x1, y1] (pixels; x1, y1 excluded)."""
    if len(box) != 4:
        raise UserError(f"box={list(box)} must be [x0, y0, x1, y1] in pixels")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
        raise UserError(f"box={list(box)} must satisfy 0 <= x0 < x1 <= {image_size} and 0 <= y0 < y1 <= "
                        f"{image_size} (the tokenizer's image size)")
    region = torch.zeros(image_size, image_size, dtype=torch.bool)
    region[y0:y1, x0:x1] = True
    return region


def token_cells(region: torch.Tensor, pixels_per_token: int) -> torch.Tensor:
    """Pixel regions (B, H, W) bool -> (B, h, w) bool: a token cell is in when any of its pixels is."""
    return F.max_pool2d(region[:, None].float(), pixels_per_token)[:, 0].bool()


def raster_region(cells: torch.Tensor) -> torch.Tensor:
    """What a raster GPT can re-draw of token regions (B, T): every token from each row's first one on."""
    return cells.long().cummax(dim=1).values.bool()


@torch.no_grad()
def edit_tokens(models: Models, images: torch.Tensor, region: torch.Tensor, cond: torch.Tensor | None, num: int,
                s: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input's tokens (B, T), `num` edits of each (B, num, T), and the token region drawn anew (B, T) (a raster
    GPT's grows to the end of the sequence), for images (B, C, H, W) in [-1, 1] and pixel regions (B, H, W)."""
    tokenizer, gpt = models.tokenizer, models.gpt
    if not tokenizer.is_discrete:
        raise UserError("editing draws index tokens; this tokenizer makes continuous ones")
    if region.shape != (images.shape[0], *images.shape[2:]):
        raise UserError(f"the region has shape {tuple(region.shape)}; it must be (B, H, W) = "
                        f"{(images.shape[0], *images.shape[2:])}, one per image")
    real = tokenizer.tokenize(images).flatten(1)  # (B, T)
    cells = token_cells(region.to(real.device), tokenizer.pixels_per_token).flatten(1)  # (B, T)
    if not cells.any(dim=1).all():
        raise UserError("a region covers no pixel of an image; mark at least one pixel of each (mask > 0, or a box)")
    cond_n = None if cond is None else cond.repeat_interleave(num)
    if gpt.causal:
        cells = raster_region(cells)
        starts = cells.long().argmax(dim=1).tolist()  # the first re-drawn token of each image
        edits = torch.stack([draw_tokens(gpt, num, None if cond is None else cond_n[i * num:(i + 1) * num], s,
                                         seed=s.seed + i, prefix=real[i:i + 1, :start].expand(num, -1))
                             for i, start in enumerate(starts)])  # (B, num, T)
    else:
        edits = draw_tokens(gpt, len(real) * num, cond_n, s, known=real.repeat_interleave(num, dim=0),
                            region=cells.repeat_interleave(num, dim=0)).view(len(real), num, -1)
    return real, edits, cells


@torch.no_grad()
def edit_images(models: Models, images: torch.Tensor, region: torch.Tensor, cond: torch.Tensor | None, num: int,
                s: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` edits of each image (B, num, C, H, W) in [-1, 1], the reconstruction outside the re-drawn cells, and
    those cells as a pixel mask (B, 1, H, W) bool."""
    t = models.tokenizer
    real, edits, cells = edit_tokens(models, images, region, cond, num, s)
    h, w = t.latent_grid
    pixel_cells = cells.view(-1, 1, h, w).repeat_interleave(t.pixels_per_token, 2).repeat_interleave(
        t.pixels_per_token, 3)  # (B, 1, H, W)
    reconstruction = decode(t, real)  # (B, C, H, W)
    drawn = decode(t, edits.flatten(0, 1)).view(len(real), num, *images.shape[1:])
    return torch.where(pixel_cells[:, None], drawn, reconstruction[:, None]), pixel_cells


def edit_rows(images: torch.Tensor, edited: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """The figure's rows, per image: input | input with the re-drawn cells grey | its edits:
    (B * (num + 2), C, H, W) in [-1, 1], for a grid of num + 2 columns."""
    masked = images.masked_fill(cells, 0.0)  # grey in [-1, 1]
    return torch.cat([images[:, None], masked[:, None], edited], dim=1).flatten(0, 1)
