"""Quantizers behind one interface: `quantizer(z) -> QuantizerOutput`, `quantize(z) -> indices`,
`dequantize(indices) -> z_q`, on encoder latents z of shape (B, D, H, W) with D = embedding_dim.

`VectorQuantize` (vq.py) is a VQ-VAE codebook (van den Oord et al. 2017) with the tricks of its successors as
options; `FSQ` (fsq.py) is finite scalar quantization. `build_quantizer(cfg)` picks one by its config type.

Caller contract: add `out.loss` (already weighted) to the generator loss, log `out.metrics` as
`codebook/<key>`, nothing else. Every forward in training mode is one step (the `step` buffer, saved in
checkpoints): EMA updates, usage counts, latent-based initialisation and dead-code restarts all happen
inside it, so run it once per micro-batch and never a second time in training mode (reuse z_q for the
discriminator step). `pretrain_steps`, `restart_after` and `usage_window` count these forwards.

Warm start: while step < pretrain_steps, forward returns z unchanged with a zero loss, in eval mode too
(validation then shows the autoencoder), and indices are the nearest codes of the untouched codebook;
`quantize`/`dequantize` always use the codebook. The first training forward at or after pretrain_steps
seeds the codes (latent_random/kmeans) and sets the `initialized` buffer.

Distributed: under an initialised torch.distributed group, every training forward is a collective (usage
counts, EMA statistics, init samples and restart choices are summed or broadcast from rank 0), so every
rank keeps an identical codebook; all ranks must call it equally often, as DDP requires anyway. Eval-mode
forwards and `quantize`/`dequantize` never communicate.
"""


from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn

COLLAPSED = 0.1  # a usage below this after usage_window training steps is warned about


@dataclass
class QuantizerOutput:
    """What every quantizer's forward returns."""

    z_q: Tensor  # (B, D, H, W), the input's shape; gradients reach z through it
    indices: Tensor  # (B, H, W) long, in [0, num_codewords)
    loss: Tensor  # scalar, already weighted: codebook + beta * commitment + penalty
    metrics: dict[str, Tensor] = field(default_factory=dict)  # scalars; the caller prefixes `codebook/`


# ---------------------------------------------------------------------------------------------------------
# distributed helpers: no-ops unless torch.distributed is initialised with more than one rank


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(t: Tensor) -> Tensor:
    if _world_size() > 1:
        dist.all_reduce(t)
    return t


def _broadcast(t: Tensor) -> Tensor:
    """Every rank gets rank 0's `t` (random choices made on rank 0 only)."""
    if _world_size() > 1:
        dist.broadcast(t, src=0)
    return t


def _sample_rows(x: Tensor, n: int) -> Tensor:
    """n random rows of x (N, C), without replacement when there are enough."""
    if len(x) >= n:
        return x[torch.randperm(len(x), device=x.device)[:n]]
    return x[torch.randint(len(x), (n,), device=x.device)]


# ---------------------------------------------------------------------------------------------------------
# the interface


class Quantizer(nn.Module):
    """Base class of every quantizer: the interface, plus the step counter and usage bookkeeping.

    Input: encoder latents (B, D, H, W), or token sequences (B, N, D) as vector-quantize-pytorch takes them
    (D = embedding_dim); outputs keep that layout (indices (B, H, W) or (B, N)).

    One training-mode forward is one step: EMA updates, usage counts, the latent init and dead-code restarts
    happen inside it, so call it once per micro-batch (reuse `z_q` for a discriminator step), add `out.loss` to
    your loss as it is (already weighted), and log `out.metrics` (`perplexity` of the batch's codes in [1, K],
    `usage`: the fraction of codes used in the last `usage_window` steps, `dead_codes`: their count). A usage that
    falls low early means collapse: the cosine settings (cos_dist=True, proj_dim=8, init_method="latent_random",
    penalty_weight=0.1; configs/tokenizer/quantizer/cosine.yaml) keep every code in use where plain VQ does not.
    Subclasses implement `_forward`, `_quantize` and `_dequantize` on the (B, D, H, W) layout."""

    def __init__(self, num_codewords: int, usage_window: int):
        super().__init__()
        self.num_codewords = num_codewords
        self.usage_window = usage_window
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training forwards so far
        self.register_buffer("last_used", torch.full((num_codewords,), -1, dtype=torch.long))  # -1 = never
        self._forwards = 0  # training forwards of this process (for the one collapse check; not saved)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize latents (B, D, H, W) or (B, N, D); in training mode also take one step of codebook
        bookkeeping."""
        if z.ndim == 3:  # (B, N, D) sequences: a (B, D, N, 1) grid inside
            out = self._forward(rearrange(z, "b n d -> b d n 1"))
            out = QuantizerOutput(rearrange(out.z_q, "b d n 1 -> b n d"), out.indices[..., 0], out.loss,
                                  out.metrics)
        else:
            self._check_grid(z)
            out = self._forward(z)
        if self.training:
            self._forwards += 1
            if self._forwards == self.usage_window and "usage" in out.metrics:  # once: one host sync
                self._warn_if_collapsed(float(out.metrics["usage"]))
        return out

    def _warn_if_collapsed(self, usage: float) -> None:
        if usage < COLLAPSED:
            warnings.warn(f"{type(self).__name__}: only {usage:.1%} of the {self.num_codewords} codes were used in "
                          f"the last {self.usage_window} steps (codebook collapse); the cosine settings keep them "
                          "in use: cos_dist=True, proj_dim=8, init_method='latent_random', penalty_weight=0.1",
                          stacklevel=3)

    def quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, H, W) -> code indices (B, H, W), long; or (B, N, D) -> (B, N)."""
        if z.ndim == 3:
            return self._quantize(rearrange(z, "b n d -> b d n 1"))[..., 0]
        self._check_grid(z)
        return self._quantize(z)

    def dequantize(self, indices: Tensor) -> Tensor:
        """Code indices (B, H, W) -> quantized latents (B, D, H, W); or (B, N) -> (B, N, D)."""
        if indices.ndim == 2:
            return rearrange(self._dequantize(indices[..., None]), "b d n 1 -> b n d")
        return self._dequantize(indices)

    def _check_grid(self, z: Tensor) -> None:
        if z.ndim != 4:
            raise ValueError(f"z of shape {tuple(z.shape)}: a quantizer takes latents (B, D, H, W) or (B, N, D)")

    def _forward(self, z: Tensor) -> QuantizerOutput:
        raise NotImplementedError

    def _quantize(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def _dequantize(self, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def _dead_mask(self) -> Tensor:
        """Codes not used for the last `usage_window` steps, (K,) bool."""
        return self.step - self.last_used.clamp(min=0) >= self.usage_window

    @torch.no_grad()
    def _count(self, indices: Tensor) -> Tensor:
        """Code histogram (K,) float of this batch (of all ranks in training); marks the used codes."""
        counts = torch.bincount(indices.flatten(), minlength=self.num_codewords).float()
        if self.training:
            _all_reduce(counts)
            self.last_used[counts > 0] = self.step
        return counts

    @torch.no_grad()
    def _metrics(self, counts: Tensor, dead: Tensor) -> dict[str, Tensor]:
        probs = counts / counts.sum().clamp(min=1)
        recent = (self.last_used >= 0) & (self.last_used > self.step - self.usage_window)
        return {
            "perplexity": torch.special.entr(probs).sum().exp(),  # of the batch histogram, in [1, K]
            "usage": recent.float().mean(),  # fraction of codes used in the last usage_window steps
            "dead_codes": dead.sum().float(),
        }
