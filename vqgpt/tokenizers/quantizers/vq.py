"""Vector quantization: a VQ-VAE codebook (van den Oord et al. 2017) with the tricks of its successors as
options (`VQConfig`). The interface and its contract are in base.py.

A layer to drop into your own model, configured by keyword arguments with `VQConfig`'s defaults:

    vq = VectorQuantize(num_codewords=1024, embedding_dim=256, cos_dist=True, proj_dim=8,
                        penalty_weight=0.1, init_method="latent_random")
    out = vq(z_e)                  # QuantizerOutput: z_q, indices, loss (add it to yours), metrics
    indices = vq.quantize(z_e)     # (B, H, W)
    z_q = vq.dequantize(indices)   # (B, D, H, W)
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqgpt.config import VQConfig
from vqgpt.errors import ArgumentError
from vqgpt.tokenizers.quantizers.base import Quantizer, QuantizerOutput, _all_reduce, _broadcast, _sample_rows

INIT_METHODS = ("random", "uniform", "latent_random", "kmeans")
GRADIENTS = ("ste", "rotation")
LAPLACE_EPS = 1e-5  # EMA cluster-size smoothing (Sonnet's VectorQuantizerEMA)


def _sq_dist(x: Tensor, codes: Tensor) -> Tensor:
    """Squared Euclidean distances (N, C) x (K, C) -> (N, K), in float32 even under autocast (a bf16
    matmul would pick wrong nearest neighbours)."""
    with torch.autocast(x.device.type, enabled=False):
        x, codes = x.float(), codes.float()
        return x.square().sum(-1, keepdim=True) - 2 * x @ codes.t() + codes.square().sum(-1)


def rotate_to(src: Tensor, tgt: Tensor) -> Tensor:
    """tgt's value with the rotation-trick gradient (Fifty et al. 2024, "Restructuring Vector Quantization
    with the Rotation Trick", Sec. 4.2): src is rotated and rescaled onto tgt by a constant map, so the
    encoder's gradient keeps the angle between latent and code instead of being copied as in the STE."""
    norm_src = src.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    norm_tgt = tgt.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    u, q = (src / norm_src).detach(), (tgt / norm_tgt).detach()
    w = F.normalize(u + q, dim=-1)
    # R src with R = I - 2 w w^T + 2 q u^T (R u = q), applied without building the (N, C, C) matrices
    rotated = src - 2 * (src * w).sum(-1, keepdim=True) * w + 2 * (src * u).sum(-1, keepdim=True) * q
    return rotated * (norm_tgt / norm_src).detach()


# ---------------------------------------------------------------------------------------------------------
# vector quantization


class VectorQuantize(Quantizer):
    """Nearest-neighbour codebook quantizer (VQ-VAE) with the options of `VQConfig` (or the same keywords)."""

    def __init__(self, config: VQConfig | None = None, **kwargs):
        cfg = dataclasses.replace(config or VQConfig(), **kwargs)  # keyword arguments override the config
        check_vq_config(cfg)
        super().__init__(cfg.num_codewords, cfg.usage_window)
        self.cfg = cfg
        K, d = cfg.num_codewords, cfg.embedding_dim
        self.codebook_dim = C = cfg.proj_dim or d
        # Factorised codes (ViT-VQGAN, Yu et al. 2021, Sec. 3.2): look up and learn codes in a
        # low-dimensional space, which raises codebook usage; project back to d for the decoder.
        self.in_proj = nn.Linear(d, C) if cfg.proj_dim else nn.Identity()
        self.out_proj = nn.Linear(C, d) if cfg.proj_dim else nn.Identity()
        if cfg.init_method == "uniform":  # VQ-VAE / taming-transformers' init
            codebook = torch.empty(K, C).uniform_(-1 / K, 1 / K)
        else:  # random; latent_random and kmeans overwrite it from latents when quantization starts
            codebook = torch.randn(K, C)
        if cfg.reparam:
            # SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One
            # Linear Layer"): the codes are a frozen basis through one learned linear map, so every update moves
            # every code and none is left behind. The map starts as the identity, so latent inits still apply.
            self.register_buffer("codebook", codebook)
            self.reparam = nn.Linear(C, C, bias=False)
            nn.init.eye_(self.reparam.weight)
        elif cfg.decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            # EMA codebook (van den Oord et al. 2017, App. A.1): moving averages of assignment counts and
            # latent sums; a buffer, so it is outside the optimizer and gets no gradient.
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_cluster_size", torch.ones(K))
            self.register_buffer("ema_sum", codebook.clone())
        if cfg.random_proj:
            # Search through a fixed random projection (as in BEST-RQ, Chiu et al. 2022); by Johnson-
            # Lindenstrauss it keeps distances roughly. A buffer: never trained, saved with the checkpoint.
            self.register_buffer("search_proj", torch.randn(C, cfg.random_proj) / math.sqrt(cfg.random_proj))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))  # quantization has started
        self.register_buffer("born_at", torch.zeros(K, dtype=torch.long))  # step each code got its value

    # --- lookup

    def _latents(self, z: Tensor) -> Tensor:
        """(B, D, H, W) -> latents in the lookup space, (B, H, W, C) float32."""
        z_e = self.in_proj(rearrange(z, "b d h w -> b h w d")).float()
        return F.normalize(z_e, dim=-1) if self.cfg.cos_dist else z_e

    def _codes(self) -> Tensor:
        """The codebook in the lookup space, (K, C)."""
        codes = self.reparam(self.codebook) if self.cfg.reparam else self.codebook
        return F.normalize(codes, dim=-1) if self.cfg.cos_dist else codes

    def _search(self, x: Tensor) -> Tensor:
        """Lookup-space vectors (..., C) -> the space the nearest neighbour is searched in."""
        if self.cfg.random_proj:
            x = x @ self.search_proj
            x = F.normalize(x, dim=-1) if self.cfg.cos_dist else x
        return x

    def _distances(self, x: Tensor, codes: Tensor) -> Tensor:
        """(N, C), (K, C) -> squared distances in the search space (N, K); for unit vectors 2 - 2 cos."""
        with torch.autocast(x.device.type, enabled=False):  # float32 search, as in _sq_dist
            return _sq_dist(self._search(x.float()), self._search(codes.float()))

    @torch.no_grad()
    def _quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, H, W) -> code indices (B, H, W), long."""
        x = self._latents(z)  # (B, H, W, C)
        dist_ = self._distances(rearrange(x, "b h w c -> (b h w) c"), self._codes())  # (N, K)
        return dist_.argmin(-1).view(x.shape[:-1])

    def _dequantize(self, indices: Tensor) -> Tensor:
        """Code indices (B, H, W) -> quantized latents (B, D, H, W)."""
        return rearrange(self.out_proj(self._codes()[indices]), "b h w d -> b d h w")

    # --- forward

    def _forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize latents (B, D, H, W); in training mode also update the codebook state (one step)."""
        cfg = self.cfg
        z_e = self._latents(z)  # (B, H, W, C)
        x = rearrange(z_e, "b h w c -> (b h w) c")  # (N, C)
        quantizing = bool(self.step >= cfg.pretrain_steps)
        dead = None
        if self.training and quantizing:
            if not self.initialized:
                self._start(x.detach())
            if cfg.restart_after:
                dead = self._restart(x.detach())
        # EMA steps below update the codebook in place; the penalty's graph keeps this copy.
        codes = self._codes() if cfg.decay is None else self._codes().clone()  # (K, C)
        penalty_weight = self._penalty_weight()
        with_penalty = quantizing and penalty_weight > 0
        with torch.set_grad_enabled(with_penalty and torch.is_grad_enabled()):
            dist_ = self._distances(x, codes)  # (N, K)
        indices = dist_.detach().argmin(-1)  # (N,)
        counts = self._count(indices)
        if dead is None:
            dead = self._dead_mask()
        metrics = self._metrics(counts, dead)
        indices = indices.view(z_e.shape[:-1])  # (B, H, W)
        if not quantizing:  # autoencoder warm start: z passes through; indices are the would-be codes
            self._tick()
            # zero, but touching every parameter, so DDP need not be told find_unused_parameters=True
            loss = sum((p.sum() for p in self.parameters()), z.new_zeros((), dtype=torch.float32)) * 0.0
            return QuantizerOutput(z, indices, loss, metrics)

        e = codes[indices.flatten()]  # (N, C)
        loss = cfg.beta * F.mse_loss(x, e.detach())  # commitment: the encoder commits to its code
        if cfg.decay is None:
            loss = loss + F.mse_loss(e, x.detach())  # codebook: codes move to their latents
        if with_penalty:
            loss = loss + penalty_weight * self._penalty(dist_)
        if x.requires_grad:  # gradient estimator; the forward value is e either way
            e = rotate_to(x, e) if cfg.gradient == "rotation" else x + (e - x).detach()
        else:  # no encoder gradient to estimate; the codebook still learns only from the loss above
            e = e.detach()
        if self.training and cfg.decay is not None:
            self._ema_update(x.detach(), indices.flatten(), counts)
        z_q = self.out_proj(e.view(z_e.shape))  # (B, H, W, D)
        self._tick()
        return QuantizerOutput(rearrange(z_q, "b h w d -> b d h w").to(z.dtype), indices, loss, metrics)

    def _tick(self) -> None:
        if self.training:
            self.step += 1

    def _penalty_weight(self) -> float:
        """The usage penalty's weight now: penalty_weight, or on its way to penalty_final (a strong push to use
        every code early, a weaker one once codes are in use, so it costs less reconstruction late)."""
        cfg = self.cfg
        if cfg.penalty_final is None:
            return cfg.penalty_weight
        done = min(1.0, int(self.step) / cfg.penalty_decay_steps)
        return cfg.penalty_weight + done * (cfg.penalty_final - cfg.penalty_weight)

    def _penalty(self, dist_: Tensor) -> Tensor:
        """Codebook-usage penalty on soft assignments p = softmax(-distance / T), (N, K): log K minus the
        entropy of the batch-average p, which is only small when the batch spreads over the whole codebook;
        optionally plus the mean per-sample entropy, which sharpens each assignment. Per-sample entropy
        alone would only sharpen, never spread usage. The entropy loss of MAGVIT-v2 (Yu et al. 2023,
        "Language Model Beats Diffusion", Eq. 5), after Jansen et al. 2020; computed per rank."""
        log_p = F.log_softmax(-dist_ / self.cfg.penalty_temperature, dim=-1)
        avg = log_p.exp().mean(0)  # (K,)
        penalty = math.log(self.num_codewords) - torch.special.entr(avg).sum()
        if self.cfg.penalty_sample_weight:
            sample_entropy = -(log_p.exp() * log_p).sum(-1).mean()
            penalty = penalty + self.cfg.penalty_sample_weight * sample_entropy
        return penalty

    # --- codebook state (training mode only)

    @torch.no_grad()
    def _set_codes(self, mask: Tensor | slice, codes: Tensor) -> None:
        if self.cfg.reparam:  # the basis rows whose image under the map is `codes`: W b = c, per row
            weight = self.reparam.weight.float()
            codes = torch.linalg.lstsq(weight, codes.float().T).solution.T.to(self.codebook.dtype)
        self.codebook[mask] = codes
        if self.cfg.decay is not None:  # the EMA restarts from these codes, each as one latent's worth
            self.ema_sum[mask] = codes
            self.ema_cluster_size[mask] = 1.0

    @torch.no_grad()
    def _start(self, x: Tensor) -> None:
        """First quantizing training step: seed the codes from latents if init_method says so."""
        if self.cfg.init_method in ("latent_random", "kmeans"):
            codes = _broadcast(_sample_rows(x, self.num_codewords).contiguous())  # (K, C), rank 0's pick
            if self.cfg.init_method == "kmeans":
                codes = self._kmeans(x, codes)
            self._set_codes(slice(None), codes)
        self.born_at.fill_(int(self.step))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _kmeans(self, x: Tensor, centroids: Tensor) -> Tensor:
        """Lloyd iterations (Lloyd 1982) on the latents of every rank: sums and counts are all-reduced."""
        for _ in range(self.cfg.kmeans_iters):
            assign = _sq_dist(x, centroids).argmin(-1)  # (N,)
            sums = _all_reduce(torch.zeros_like(centroids).index_add_(0, assign, x))  # (K, C)
            counts = _all_reduce(torch.bincount(assign, minlength=len(centroids)).float())  # (K,)
            centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
            centroids = F.normalize(centroids, dim=-1) if self.cfg.cos_dist else centroids
        return centroids

    def _dead_mask(self) -> Tensor:
        """Codes unused for `restart_after` steps (else `usage_window`) since they last got a value."""
        idle = self.step - torch.maximum(self.last_used, self.born_at)
        return idle >= (self.cfg.restart_after or self.usage_window)

    @torch.no_grad()
    def _restart(self, x: Tensor) -> Tensor:
        """Reseed dead codes with latents of this batch (rank 0's pick), as in Jukebox (Dhariwal et al.
        2020) and SoundStream (Zeghidour et al. 2021). Runs before the lookup, so the graph stays valid."""
        dead = self._dead_mask()  # identical on every rank: last_used comes from all-reduced counts
        n = int(dead.sum())
        if n:
            self._set_codes(dead, _broadcast(_sample_rows(x, n).contiguous()))
            self.born_at[dead] = self.step
        return dead

    @torch.no_grad()
    def _ema_update(self, x: Tensor, indices: Tensor, counts: Tensor) -> None:
        """EMA codebook step; `counts` are already summed over ranks, the latent sums are summed here."""
        sums = _all_reduce(torch.zeros_like(self.ema_sum).index_add_(0, indices, x))  # (K, C)
        self.ema_cluster_size.lerp_(counts, 1 - self.cfg.decay)  # decay * size + (1 - decay) * counts
        self.ema_sum.lerp_(sums, 1 - self.cfg.decay)
        # Laplace smoothing keeps codes that have not been chosen lately from dividing by ~0
        n = self.ema_cluster_size.sum()
        size = (self.ema_cluster_size + LAPLACE_EPS) / (n + self.num_codewords * LAPLACE_EPS) * n
        self.codebook.copy_(self.ema_sum / size[:, None])


# ---------------------------------------------------------------------------------------------------------
# config checks

def check_vq_config(cfg: VQConfig) -> None:
    """Raise an ArgumentError (a ValueError) naming the argument and the fix for the first bad setting in `cfg`."""
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ArgumentError(name, getattr(cfg, name), rule)

    need(cfg.num_codewords >= 1, "num_codewords", "need at least 1 codeword")
    need(cfg.embedding_dim >= 1, "embedding_dim", "must be >= 1 (the encoder's output channels)")
    need(cfg.usage_window >= 1, "usage_window", "must be >= 1 step")
    need(cfg.init_method in INIT_METHODS, "init_method", f"choose one of {', '.join(INIT_METHODS)}")
    need(cfg.gradient in GRADIENTS, "gradient", f"choose one of {', '.join(GRADIENTS)}")
    need(cfg.proj_dim is None or 1 <= cfg.proj_dim < cfg.embedding_dim, "proj_dim",
         f"factorised codes need 1 <= proj_dim < embedding_dim={cfg.embedding_dim}; lower it or set null")
    need(cfg.random_proj is None or cfg.random_proj >= 1, "random_proj", "must be >= 1, or null for off")
    need(cfg.decay is None or 0 < cfg.decay < 1, "decay", "EMA decay must be in (0, 1), e.g. 0.99, or null")
    need(cfg.restart_after is None or cfg.restart_after >= 1, "restart_after", "must be >= 1 step, or null")
    need(not (cfg.reparam and cfg.decay is not None), "reparam", "SimVQ learns its map from the codebook loss; "
         "set decay=null (no EMA) or reparam=false")
    need(cfg.kmeans_iters >= 1, "kmeans_iters", "must be >= 1")
    need(cfg.pretrain_steps >= 0, "pretrain_steps", "must be >= 0")
    need(cfg.beta >= 0, "beta", "the commitment weight must be >= 0")
    need(cfg.penalty_weight >= 0, "penalty_weight", "must be >= 0 (0 = off)")
    need(cfg.penalty_sample_weight >= 0, "penalty_sample_weight", "must be >= 0 (0 = off)")
    need(cfg.penalty_temperature > 0, "penalty_temperature", "must be > 0")
    need(cfg.penalty_final is None or cfg.penalty_final >= 0, "penalty_final",
         "must be >= 0, or null for a fixed weight")
    need(cfg.penalty_final is None or cfg.penalty_decay_steps >= 1, "penalty_decay_steps",
         "must be >= 1 when penalty_final is set (the steps the weight takes to get there)")
