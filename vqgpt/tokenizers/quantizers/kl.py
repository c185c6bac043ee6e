"""A KL bottleneck in the quantizer's place: the VQ-GAN then makes continuous tokens, a diagonal Gaussian
posterior per latent position regularised towards N(0, I) (the KL autoencoder of Rombach et al. 2022, whose
latents MAR and GIVT model with their continuous heads).

    bottleneck = KLBottleneck(KLConfig(embedding_dim=8))
    out = bottleneck(z)                # training: a draw from q(z|x); eval: its mean; out.loss = kl_weight * KL
    tokens = bottleneck.quantize(z)    # (B, h, w, D): the mean, divided by the latents' running std
    z_q = bottleneck.dequantize(tokens)

Tokens are scaled to unit standard deviation (Stable Diffusion's scale factor, measured here as a running std of
the posterior means during training and saved with the weights), so a GPT head's noise levels fit them.
`num_codewords` is None: there is no codebook and no usage; the output's `indices` hold the tokens.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vqgpt.config import KLConfig
from vqgpt.tokenizers.quantizers.base import QuantizerOutput


class KLBottleneck(nn.Module):
    """Latents (B, D, H, W) -> a 1x1 conv to a mean and log-variance per number -> a draw (training) or the mean."""

    num_codewords = None  # continuous: the VQ-GAN's codebook_size is None, its tokens (B, h, w, D) floats
    is_discrete = False

    def __init__(self, cfg: KLConfig):
        super().__init__()
        if cfg.kl_weight < 0 or not 0 <= cfg.std_momentum < 1:
            raise ValueError(f"kl_weight={cfg.kl_weight} must be >= 0 and std_momentum={cfg.std_momentum} in [0, 1)")
        self.cfg = cfg  # as every quantizer keeps it
        self.embedding_dim, self.kl_weight, self.momentum = cfg.embedding_dim, cfg.kl_weight, cfg.std_momentum
        self.moments = nn.Conv2d(cfg.embedding_dim, 2 * cfg.embedding_dim, kernel_size=1)
        self.register_buffer("latent_std", torch.ones(()))  # what tokens are divided by
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def posterior(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance), each (B, D, H, W); the log-variance clamped as LDM's DiagonalGaussian does."""
        mean, log_var = self.moments(z).chunk(2, dim=1)
        return mean, log_var.clamp(-30.0, 20.0)

    def forward(self, z: Tensor) -> QuantizerOutput:
        mean, log_var = self.posterior(z)
        # KL(N(mean, var) || N(0, 1)) per number, averaged
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).mean()
        if self.training:
            z_q = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
            with torch.no_grad():  # the tokens' scale: a running std of the means
                std = mean.detach().float().std()
                first = self.step == 0
                running = self.momentum * self.latent_std + (1 - self.momentum) * std
                self.latent_std.copy_(torch.where(first, std, running))
                self.step += 1
        else:
            z_q = mean
        tokens = rearrange(mean.detach() / self.latent_std, "b d h w -> b h w d")
        metrics = {"kl": kl.detach(), "latent_std": self.latent_std.clone()}
        return QuantizerOutput(z_q, tokens, self.kl_weight * kl, metrics)

    @torch.no_grad()
    def quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, H, W) -> tokens (B, H, W, D): the posterior mean at unit scale."""
        return rearrange(self.posterior(z)[0] / self.latent_std, "b d h w -> b h w d")

    def dequantize(self, tokens: Tensor) -> Tensor:
        """Tokens (B, H, W, D) -> latents (B, D, H, W) the decoder takes."""
        return rearrange(tokens * self.latent_std, "b h w d -> b d h w")
