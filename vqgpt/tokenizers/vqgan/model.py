"""VQ-GAN tokenizer: conv encoder -> quantizer -> conv decoder (Esser et al. 2021, "Taming Transformers").

The encoder/decoder are taming-transformers' `Encoder`/`Decoder` (themselves from the DDPM U-Net, Ho et al.
2020): ResnetBlocks with GroupNorm + SiLU, single-head spatial self-attention at chosen resolutions, and
a mid block with attention. An image (B, C, H, W) in [-1, 1] becomes a (B, h, w) grid of code indices,
h = H / f with f = 2 ** (len(ch_mult) - 1).

    model = VQGAN(cfg)                         # cfg: VQGANConfig
    x_rec, q = model(x)                        # q: QuantizerOutput (z_q, indices, loss, metrics)
    indices = model.tokenize(x)                # (B, h, w), for the GPT
    images = model.decode_indices(indices)     # (B, C, H, W)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgpt.config import VQGANConfig
from vqgpt.errors import ArgumentError, argument_prefix
from vqgpt.registry import register_model
from vqgpt.tokenizers.base import Tokenizer
from vqgpt.tokenizers.quantizers import QuantizerOutput, build_quantizer


def downsample_factor(cfg: VQGANConfig) -> int:
    """f: each `ch_mult` entry after the first halves the side once."""
    return 2 ** (len(cfg.ch_mult) - 1)


def check_tokenizer_config(cfg: VQGANConfig) -> None:
    """Refuse a config the model cannot be built from, naming the key and the fix on one line (an ArgumentError:
    the command line prefixes `tokenizer.`)."""
    def bad(message: str) -> ArgumentError:
        return ArgumentError("", message=message)

    if len(cfg.ch_mult) == 0:
        raise bad("§ch_mult is empty; give one channel multiplier per level, e.g. [1, 2, 2]")
    for key in ("in_channels", "image_size", "channels", "num_res_blocks", "z_channels", "embed_dim"):
        if getattr(cfg, key) < 1:
            raise bad(f"§{key}={getattr(cfg, key)} must be a positive integer")
    if any(m < 1 for m in cfg.ch_mult):
        raise bad(f"§ch_mult={list(cfg.ch_mult)} has an entry below 1; use positive integers")
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad(f"§dropout={cfg.dropout} must be in [0, 1)")
    f = downsample_factor(cfg)
    if cfg.image_size % f != 0:
        raise bad(f"§image_size {cfg.image_size} is not divisible by the downsampling factor f={f} (ch_mult has "
                  f"{len(cfg.ch_mult)} entries); change dataset.image_size or §ch_mult")
    if cfg.quantizer.embedding_dim != cfg.embed_dim:
        raise bad(f"§quantizer.embedding_dim={cfg.quantizer.embedding_dim} differs from §embed_dim={cfg.embed_dim}; "
                  "set it to ${..embed_dim} as the quantizer YAMLs do")


# ---------------------------------------------------------------------------------------------------------
# Building blocks


def normalize(channels: int) -> nn.GroupNorm:
    # taming uses 32 groups; gcd keeps that for the usual widths (multiples of 32) and lets tiny test
    # models (8 or 16 channels) build, with one group per channel.
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) twice, 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                         if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        q, k, v = (rearrange(conv(h), "b c h w -> b 1 (h w) c") for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), scaled by C ** -0.5 as in taming
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 conv3x3; taming pads right/bottom only, so even sides halve exactly."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (no transposed-conv checkerboard, Odena et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResnetBlocks, each followed by attention where asked."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attn: bool, dropout: float,
                 resample: nn.Module | None):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.blocks = nn.ModuleList(ResnetBlock(widths[i], widths[i + 1], dropout) for i in range(num_blocks))
        self.attns = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks)) if attn else None
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attns is not None:
                x = self.attns[i](x)
        return self.resample(x)


class MidBlock(nn.Sequential):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__(ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                         ResnetBlock(channels, channels, dropout))


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, z_channels [x2 if double_z], H/f, W/f)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, kernel_size=3, padding=1)
        levels, resolution, block_in = [], cfg.image_size, cfg.channels
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            attn = resolution in cfg.attn_resolutions
            levels.append(Level(block_in, width, cfg.num_res_blocks, attn, cfg.dropout,
                                None if last else Downsample(width)))
            block_in, resolution = width, resolution if last else resolution // 2
        self.levels = nn.ModuleList(levels)
        self.mid = MidBlock(block_in, cfg.dropout)
        self.norm_out = normalize(block_in)
        out_channels = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, in_channels, h*f, w*f); num_res_blocks + 1 per level."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.ch_mult]
        resolution = cfg.image_size // downsample_factor(cfg)
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = MidBlock(block_in, cfg.dropout)
        levels = []
        for i in reversed(range(len(widths))):  # lowest resolution first
            attn = resolution in cfg.attn_resolutions
            levels.append(Level(block_in, widths[i], cfg.num_res_blocks + 1, attn, cfg.dropout,
                                Upsample(widths[i]) if i > 0 else None))
            block_in, resolution = widths[i], resolution * 2 if i > 0 else resolution
        self.levels = nn.ModuleList(levels)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------
# The model


@register_model("vqgan", VQGANConfig)
class VQGAN(Tokenizer):
    """Encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder, built from its config alone."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        check_tokenizer_config(cfg)
        self.config = cfg
        self.encoder = Encoder(cfg)
        encoder_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.quant_conv = nn.Conv2d(encoder_out, cfg.embed_dim, kernel_size=1)
        with argument_prefix("quantizer."):  # a bad quantizer setting is named by its key in this config
            self.quantizer = build_quantizer(cfg.quantizer)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, kernel_size=1)
        self.decoder = Decoder(cfg)

    @property
    def downsample_factor(self) -> int:
        """f, the side of the image patch behind one token."""
        return downsample_factor(self.config)

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(h, w): the token grid of one image."""
        side = self.config.image_size // self.downsample_factor
        return side, side

    @property
    def codebook_size(self) -> int | None:
        """K, the token vocabulary size; None with a KL bottleneck (continuous tokens)."""
        return self.quantizer.num_codewords

    @property
    def token_dim(self) -> int | None:
        """Width of a continuous token (embed_dim) with a KL bottleneck; None for code indices."""
        return None if self.is_discrete else self.config.embed_dim

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight: where the loss compares gradient norms for the GAN weight."""
        return self.decoder.conv_out.weight

    def _check_images(self, x: torch.Tensor) -> None:
        expected = (self.config.in_channels, self.config.image_size, self.config.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> continuous latents (B, embed_dim, h, w), before quantization."""
        self._check_images(x)
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> QuantizerOutput:
        """Images -> the quantizer's output (z_q (B, embed_dim, h, w), indices (B, h, w), loss, metrics)."""
        return self.quantizer(self.encode_latents(x))

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code indices (B, h, w) (a KL bottleneck: tokens (B, h, w, D)); no quantizer loss or
        training-time codebook updates."""
        self.check_images(x)
        return self.quantizer.quantize(self.encode_latents(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, embed_dim, h, w) -> images (B, C, H, W), roughly in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> images (B, C, H, W), not clamped (training and evaluation compare these)."""
        return self.decode(self.quantizer.dequantize(indices))

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids (B, h, w) or sequences (B, h*w) (continuous: (B, h, w, D) or (B, h*w, D)) -> images
        (B, C, H, W) in [-1, 1], float32."""
        grid = tokens.reshape(-1, *self.latent_grid, *([] if self.is_discrete else [self.token_dim]))
        if not self.is_discrete:
            grid = grid.to(self.post_quant_conv.weight.dtype)  # the token cache keeps float16
        return self.decode_indices(grid).float().clamp(-1, 1)

    def checkpoint_meta(self) -> dict:
        return {**super().checkpoint_meta(), **({} if self.is_discrete else {"token_dim": self.token_dim})}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Reconstruct images; the QuantizerOutput carries the (already weighted) codebook loss."""
        q = self.encode(x)
        return self.decode(q.z_q), q
