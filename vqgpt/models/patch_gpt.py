"""PatchGPT: the transformer core over continuous tokens, each a flattened P x P image patch (tokenizer=patch).

Only the ends differ from the token GPT: a linear map takes a patch in, and a regression head predicts the next
patch. `gpt.head` picks what it predicts:
- `gaussian` (default): a mean and a standard deviation per number, trained by the Gaussian negative
  log-likelihood; sampling draws mean + temperature * std * noise, so samples differ from one another.
- `mse`: the mean alone, trained by the mean squared error; sampling writes the mean, so every sample of one
  condition is the same image (an unconditional model draws one image). Kept as the baseline it is.

    model = PatchGPT(cfg)                                  # cfg.token_dim = P * P * channels, vocab_size = 0
    out, loss = model(patches, labels, targets=patches)    # patches (B, T, D); out[:, i] predicts patches[:, i]
    patch = model.sample(out[:, -1], temperature, generator)   # (B, D)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.models.transformer import Transformer
from vqgpt.registry import register_model

# The data are 8-bit images in [-1, 1]: a standard deviation below half a grey level (1/255) says nothing
# more, and lets the likelihood run off to -inf on flat backgrounds.
MIN_LOG_STD = math.log(1 / 255)
MAX_LOG_STD = math.log(2.0)


@register_model("patch_gpt", GPTConfig)
class PatchGPT(Transformer):
    """The transformer core with a linear patch embedding in and a Gaussian (or MSE) patch head out."""

    def __init__(self, config: GPTConfig):
        super().__init__(config, lambda c: nn.Linear(c.token_dim, c.n_embd, bias=c.bias))
        width = 2 * config.token_dim if config.head == "gaussian" else config.token_dim
        self.head = nn.Linear(config.n_embd, width, bias=True)
        self.init_weights()

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., 2D): mean and log-std of the next patch (gaussian), or (..., D): its mean (mse).

        In fp32 under bf16 autocast: a bf16 mean has 8 bits of mantissa, coarser than the pixels it predicts."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float())

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The predicted patch (..., D) of an output (..., 2D or D): the distribution's mean."""
        return out[..., :self.config.token_dim]

    def log_std(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., self.config.token_dim:].clamp(MIN_LOG_STD, MAX_LOG_STD)

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean Gaussian NLL (nats per number, the constant 0.5 log 2 pi left out), or the mean squared error."""
        error = targets.float() - self.mean(out).float()
        if self.config.head == "mse":
            return error.square().mean()
        log_std = self.log_std(out).float()
        return (0.5 * (error * torch.exp(-log_std)).square() + log_std).mean()

    def sample(self, out: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One patch per row (B, D) from outputs (B, 2D or D): mean + temperature * std * N(0, 1), or the mean."""
        mean = self.mean(out).float()
        if self.config.head == "mse":
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + temperature * self.log_std(out).float().exp() * noise
