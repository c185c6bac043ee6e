"""What a patch GPT predicts of its next continuous token: the heads behind `gpt.head` (vqgpt/models/patch_gpt.py).

Every head turns the transformer's final hidden state z (..., C) into an output (..., W) (`forward`), and then:
    loss(out, x)                              the training loss against the true tokens x (..., D)
    sample(out, temperature, generator, s)    one token per row (B, D); `out` holds [cond; null] rows (2B, W)
                                              when classifier-free guidance is on (s = cfg_scale), else B rows
    mean(out)                                 one point guess (..., D): the decoding GIF's filler
    guide(out, s)                             the outputs (B, W) guidance draws from, for callbacks to read

    gaussian   a mean and a standard deviation per number, NLL; draws mean + temperature * std * noise
    mse        the mean alone, MSE; writes the mean (one image per condition)
    mixture    a mixture of K Gaussians per token, diagonal, NLL (GIVT, Tschannen et al. 2023)
    diffusion  a small MLP denoiser conditioned on z, the denoising loss; sampled in a few tens of DDPM steps
               (MAR, Li et al. 2024, "Autoregressive Image Generation without Vector Quantization")

The Gaussian, MSE and mixture heads guide by mixing their outputs, u + s (c - u) (for the mixture: its
weights' logits, means and log-stds alike); the diffusion head mixes its noise predictions at every denoising
step, as MAR does, which is the guidance of diffusion models (Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqgpt.config import GPTConfig

# The data are 8-bit images in [-1, 1]: a standard deviation below half a grey level (1/255) says nothing
# more, and lets the likelihood run off to -inf on flat backgrounds.
MIN_LOG_STD = math.log(1 / 255)
MAX_LOG_STD = math.log(2.0)
DIFFUSION_TIMESTEPS = 1000  # the training noise levels (DDPM's); sampling strides through them
DEFAULT_DENOISING_STEPS = 50  # MAR samples with 100 on ImageNet; 16 numbers per token need fewer


def linear_guide(out: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) over the doubled batch [cond; null] of outputs (2B, ...):
    u + s * (c - u). The token GPTs' logits are mixed this way too (vqgpt/generate/sampling.py, masked.py)."""
    if cfg_scale is None:
        return out
    cond, uncond = out.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


class GaussianHead(nn.Linear):
    """z -> [mean, log-std] of each of the D numbers: (..., 2D). A Linear itself, so checkpoints keep `head.weight`."""

    def __init__(self, config: GPTConfig):
        super().__init__(config.n_embd, 2 * config.token_dim, bias=True)
        self.token_dim = config.token_dim

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., :self.token_dim]

    def log_std(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., self.token_dim:].clamp(MIN_LOG_STD, MAX_LOG_STD)

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean Gaussian NLL (nats per number, the constant 0.5 log 2 pi left out)."""
        log_std = self.log_std(out).float()
        return (0.5 * ((targets.float() - self.mean(out).float()) * torch.exp(-log_std)).square() + log_std).mean()

    def guide(self, out: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
        return linear_guide(out, cfg_scale)

    def sample(self, out: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               cfg_scale: float | None = None) -> torch.Tensor:
        out = self.guide(out.float(), cfg_scale)
        mean = self.mean(out)
        return mean + temperature * self.log_std(out).exp() * torch.randn(mean.shape, generator=generator,
                                                                          device=mean.device)


class MSEHead(nn.Linear):
    """z -> the mean of the next token (..., D), trained by the mean squared error; sampling writes the mean."""

    def __init__(self, config: GPTConfig):
        super().__init__(config.n_embd, config.token_dim, bias=True)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (targets.float() - out.float()).square().mean()

    def guide(self, out: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
        return linear_guide(out, cfg_scale)

    def sample(self, out: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               cfg_scale: float | None = None) -> torch.Tensor:
        return self.guide(out.float(), cfg_scale)


class MixtureHead(nn.Linear):
    """z -> K mixture logits, K means and K log-stds per number: (..., K + 2KD). GIVT's head: a mixture of K
    diagonal Gaussians models a token's numbers jointly (which component), where one Gaussian draws each alone."""

    def __init__(self, config: GPTConfig):
        self.k, self.token_dim = config.num_mixtures, config.token_dim
        super().__init__(config.n_embd, self.k * (1 + 2 * config.token_dim), bias=True)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (..., K), means (..., K, D), log-stds (..., K, D))."""
        k, d = self.k, self.token_dim
        logits = out[..., :k]
        means = out[..., k:k + k * d].unflatten(-1, (k, d))
        log_stds = out[..., k + k * d:].unflatten(-1, (k, d)).clamp(MIN_LOG_STD, MAX_LOG_STD)
        return logits, means, log_stds

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        logits, means, _ = self.split(out.float())
        return (logits.softmax(-1)[..., None] * means).sum(-2)

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean mixture NLL in nats per number (the constant 0.5 log 2 pi left out, as the Gaussian head's)."""
        logits, means, log_stds = self.split(out.float())
        z = (targets.float()[..., None, :] - means) * torch.exp(-log_stds)  # (..., K, D)
        log_component = -(0.5 * z.square() + log_stds).sum(-1)  # (..., K): log N(x | component), less constants
        log_p = torch.logsumexp(logits.log_softmax(-1) + log_component, dim=-1)  # (...,)
        return -log_p.mean() / self.token_dim

    def guide(self, out: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
        return linear_guide(out, cfg_scale)

    def sample(self, out: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               cfg_scale: float | None = None) -> torch.Tensor:
        """A component from the weights, then its mean + temperature * std * noise (temperature scales the
        noise only, as the Gaussian head's)."""
        logits, means, log_stds = self.split(self.guide(out.float(), cfg_scale))
        race = torch.empty_like(logits).exponential_(generator=generator)  # argmax p / E: a draw from p
        pick = (logits.softmax(-1) / race).argmax(-1)[..., None, None].expand(*means.shape[:-2], 1, means.shape[-1])
        mean, log_std = means.gather(-2, pick)[..., 0, :], log_stds.gather(-2, pick)[..., 0, :]
        return mean + temperature * log_std.exp() * torch.randn(mean.shape, generator=generator, device=mean.device)


# ---------------------------------------------------------------------------------------------------------
# The diffusion head


class _AdaLNBlock(nn.Module):
    """x + gate * MLP(LayerNorm(x) * (1 + scale) + shift), with shift, scale, gate from the condition (DiT's adaLN)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """The transformer's output z *is* this head's output; a small MLP denoiser eps(x_t, t, z) holds the
    distribution: trained to predict the noise added to a token, sampled by DDPM from noise (MAR's DiffLoss)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        width, self.token_dim = config.diffusion_width, config.token_dim
        self.batch_mul = config.diffusion_batch_mul
        self.x_in = nn.Linear(config.token_dim, width)
        self.t_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.z_in = nn.Linear(config.n_embd, width)
        self.blocks = nn.ModuleList([_AdaLNBlock(width) for _ in range(config.diffusion_depth)])
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.x_out = nn.Linear(width, config.token_dim)
        self.zero_gates()
        # The cosine schedule (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(((t / T + 0.008) / 1.008) * pi / 2)
        steps = torch.arange(DIFFUSION_TIMESTEPS + 1, dtype=torch.float64) / DIFFUSION_TIMESTEPS
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        alpha_bar = (alpha_bar / alpha_bar[0])[1:].clamp(min=1e-5)  # (T,): level t = 0 .. T - 1
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    def zero_gates(self) -> None:
        """adaLN-Zero (DiT, Peebles & Xie 2023): every block starts as the identity, the output at zero noise."""
        for linear in [block.modulation[-1] for block in self.blocks] + [self.final_modulation[-1]]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden  # the denoiser reads z at every step

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The predicted noise (N, D) in noisy tokens x (N, D) at levels t (N,), given z (N, C)."""
        half = self.t_in[0].in_features // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=x.device) / half)
        angles = t.float()[:, None] * freqs[None]
        c = self.t_in(torch.cat([angles.cos(), angles.sin()], dim=-1)) + self.z_in(z)
        h = self.x_in(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.x_out(self.final_norm(h) * (1 + scale) + shift)

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The denoising loss (mean squared error of the predicted noise), batch_mul noise draws per token: not a
        likelihood."""
        z = out.reshape(-1, out.shape[-1]).repeat(self.batch_mul, 1).float()
        x0 = targets.reshape(-1, self.token_dim).repeat(self.batch_mul, 1).float()
        t = torch.randint(0, DIFFUSION_TIMESTEPS, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        a = self.alpha_bar[t][:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return (self.denoiser(x_t, t, z) - noise).square().mean()

    def guide(self, out: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
        return out if cfg_scale is None else out.chunk(2)[0]  # what a callback sees: the conditional z

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """A deterministic guess: 10 steps from x_T = 0, no noise."""
        flat = out.reshape(-1, out.shape[-1]).float()
        x = torch.zeros(len(flat), self.token_dim, device=flat.device)
        return self._denoise(x, flat, 10, 0.0, None, None).reshape(*out.shape[:-1], self.token_dim)

    def sample(self, out: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               cfg_scale: float | None = None, steps: int = DEFAULT_DENOISING_STEPS) -> torch.Tensor:
        """(B, D) tokens by DDPM from N(0, I) in `steps` strided steps; temperature scales each step's noise (MAR)."""
        z = out.float()
        rows = len(z) // (1 if cfg_scale is None else 2)
        x = torch.randn(rows, self.token_dim, generator=generator, device=z.device)
        return self._denoise(x, z, steps, temperature, generator, cfg_scale)

    def _denoise(self, x: torch.Tensor, z: torch.Tensor, steps: int, temperature: float,
                 generator: torch.Generator | None, cfg_scale: float | None) -> torch.Tensor:
        levels = torch.linspace(DIFFUSION_TIMESTEPS - 1, 0, steps, device=x.device).round().long()
        for i, t in enumerate(levels):
            a_t = self.alpha_bar[t]
            a_prev = self.alpha_bar[levels[i + 1]] if i + 1 < steps else torch.ones((), device=x.device)
            t_batch = t.expand(len(z))
            if cfg_scale is None:
                eps = self.denoiser(x, t_batch, z)
            else:  # MAR's guidance: the noise predictions mixed, each step
                cond, uncond = self.denoiser(torch.cat([x, x]), t_batch, z).chunk(2)
                eps = uncond + cfg_scale * (cond - uncond)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # not clipped (MAR's way): tokens may be latents
            beta = 1 - a_t / a_prev  # this stride's own noise level
            mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x) / (1 - a_t)
            if i + 1 < steps:
                std = (beta * (1 - a_prev) / (1 - a_t)).sqrt()
                x = mean + temperature * std * torch.randn(x.shape, generator=generator, device=x.device)
            else:
                x = mean
        return x


HEADS = {"gaussian": GaussianHead, "mse": MSEHead, "mixture": MixtureHead, "diffusion": DiffusionHead}
