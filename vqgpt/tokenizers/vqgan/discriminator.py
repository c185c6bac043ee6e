"""PatchGAN discriminator: one real/fake logit per overlapping image patch (pix2pix, Isola et al. 2017).

This is taming-transformers' `NLayerDiscriminator` with one change: GroupNorm instead of BatchNorm. The
VQ-GAN loss sends real and reconstructed batches through separately (and the generator step sends only
fakes), so BatchNorm would normalise each with different batch statistics and make a patch's logit
depend on the batch size and on gradient accumulation; a per-sample norm avoids that, as pix2pix's
instance-norm option does. With one group per channel at small widths it *is* instance norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqgpt.config import VQGANConfig
from vqgpt.errors import ArgumentError

KERNEL, PADDING = 4, 1


def patch_grid_side(image_size: int, n_layers: int) -> int:
    """Side of the discriminator's logit map: n_layers stride-2 convs, then two stride-1 convs (k4, p1)."""
    side = image_size
    for _ in range(n_layers):
        side = (side + 2 * PADDING - KERNEL) // 2 + 1
    for _ in range(2):
        side = side + 2 * PADDING - KERNEL + 1
    return side


def weights_init(module: nn.Module) -> None:
    """taming's init (from DCGAN, Radford et al. 2016): conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """(B, C, H, W) images -> (B, 1, h', w') logits, one per receptive-field patch (70x70 for 3 layers)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, KERNEL, stride=2, padding=PADDING),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = channels
        for n in range(1, n_layers + 1):
            # Width doubles per layer up to 8x; the last of these keeps the resolution (stride 1).
            out = channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width, out, KERNEL, stride=stride, padding=PADDING, bias=False),  # GroupNorm shifts
                nn.GroupNorm(math.gcd(32, out), out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, KERNEL, stride=1, padding=PADDING))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def build_discriminator(cfg: VQGANConfig) -> NLayerDiscriminator:
    """The PatchGAN for this tokenizer's images, sized by `cfg.loss.disc_channels` / `disc_layers`."""
    loss = cfg.loss
    if loss.disc_channels < 1:
        raise ArgumentError("", message=f"§loss.disc_channels={loss.disc_channels} must be a positive integer")
    if loss.disc_layers < 1:
        raise ArgumentError("", message=f"§loss.disc_layers={loss.disc_layers} must be at least 1")
    if patch_grid_side(cfg.image_size, loss.disc_layers) < 1:
        fits = [n for n in range(1, loss.disc_layers) if patch_grid_side(cfg.image_size, n) >= 1]
        deepest = max(fits, default=0)
        fix = f"use §loss.disc_layers={deepest}" if deepest else "use images of at least 6 px"
        raise ArgumentError("", message=f"§loss.disc_layers={loss.disc_layers} is too deep for image_size "
                                        f"{cfg.image_size}: the PatchGAN would output no patches; {fix}")
    return NLayerDiscriminator(cfg.in_channels, loss.disc_channels, loss.disc_layers)
