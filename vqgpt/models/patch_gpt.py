"""PatchGPT: the transformer core over continuous tokens, each a flattened P x P image patch (tokenizer=patch).

Only the ends differ from the token GPT: a linear map takes a patch in, and a head (vqgpt/models/heads.py)
predicts the next patch. `gpt.head` picks it:
- `gaussian` (default): a mean and a standard deviation per number, trained by the Gaussian negative
  log-likelihood; sampling draws mean + temperature * std * noise, each number on its own.
- `mse`: the mean alone, trained by the mean squared error; sampling writes the mean, so every sample of one
  condition is the same image (an unconditional model draws one image). Kept as the baseline it is.
- `mixture`: K Gaussians per token (GIVT), NLL; a component, then its noise: the numbers move together.
- `diffusion`: a small MLP denoiser conditioned on the transformer's output (MAR), the denoising loss; sampled in
  `sampling.denoising_steps` DDPM steps.

    model = PatchGPT(cfg)                                  # cfg.token_dim = P * P * channels, vocab_size = 0
    out, loss = model(patches, labels, targets=patches)    # patches (B, T, D); out[:, i] predicts patches[:, i]
    patch = model.sample(out[:, -1], temperature, generator)   # (B, D)
"""

from __future__ import annotations

import torch
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.models.heads import HEADS, DiffusionHead
from vqgpt.models.transformer import Transformer
from vqgpt.registry import register_model


@register_model("patch_gpt", GPTConfig)
class PatchGPT(Transformer):
    """The transformer core with a linear patch embedding in and a distribution over the next patch out."""

    def __init__(self, config: GPTConfig):
        super().__init__(config, lambda c: nn.Linear(c.token_dim, c.n_embd, bias=c.bias))
        self.head = HEADS[config.head](config)
        self.init_weights()
        if isinstance(self.head, DiffusionHead):
            self.head.zero_gates()  # init_weights redrew every Linear, its gates too

    @property
    def likelihood(self) -> bool:
        """Whether the loss is a negative log-likelihood (nats per number): the Gaussian and mixture heads'."""
        return self.config.head in ("gaussian", "mixture")

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> the head's output (..., W): the parameters of the next patch's distribution (the diffusion
        head: z itself). In fp32 under bf16 autocast: a bf16 mean has 8 bits of mantissa, coarser than pixels."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float())

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """A point guess of the patch (..., D) from outputs (..., W): the distribution's mean (diffusion: a
        deterministic draw)."""
        return self.head.mean(out)

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The head's loss: Gaussian or mixture NLL (nats per number, 0.5 log 2 pi left out), MSE, or denoising."""
        with torch.autocast(out.device.type, enabled=False):
            return self.head.loss(out, targets)

    def guide(self, out: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
        """The outputs (B, W) guidance draws from, of the doubled batch (2B, W) (what callbacks read)."""
        return self.head.guide(out, cfg_scale)

    def sample(self, out: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               cfg_scale: float | None = None, denoising_steps: int | None = None) -> torch.Tensor:
        """One patch per row (B, D) from outputs (B, W), or (2B, W) [cond; null] with guidance at cfg_scale."""
        if isinstance(self.head, DiffusionHead) and denoising_steps is not None:
            return self.head.sample(out, temperature, generator, cfg_scale, steps=denoising_steps)
        return self.head.sample(out, temperature, generator, cfg_scale)
