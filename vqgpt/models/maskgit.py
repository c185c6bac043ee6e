"""MaskGIT: a bidirectional transformer over a tokenizer's index grid that predicts masked tokens from all the
others (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer"). The same core as the GPT
(vqgpt/models/transformer.py) without the causal mask, with one more embedding row, [MASK].

    model = MaskGIT(cfg)                                   # cfg: GPTConfig, vocab/block/classes already filled
    logits, loss = model(tokens, labels, targets=tokens)  # training: a drawn share of tokens masked; CE on them
    logits, _ = model(partial, labels)                    # partial holds model.mask_token where a token is unknown

Sampling fills a grid in a few parallel steps (vqgpt/generate/masked.py). Its loss is not a likelihood of the
image: there are no bits per dimension to report.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.models.transformer import SCHEDULES, Transformer
from vqgpt.registry import register_model


def mask_ratio(progress: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """The share of tokens masked at `progress` in [0, 1] (1 at 0, 0 at 1): training draws progress uniformly,
    decoding steps through it. MaskGIT's section 3.3: the cosine schedule trains and samples best."""
    if schedule == "cosine":
        return torch.cos(progress * (math.pi / 2))
    if schedule == "linear":
        return 1 - progress
    if schedule == "square":
        return 1 - progress.square()
    raise ValueError(f"unknown mask schedule {schedule!r}; one of {', '.join(SCHEDULES)}")


@register_model("maskgit", GPTConfig)
class MaskGIT(Transformer):
    """The transformer core, bidirectional, with an embedding table of vocab_size + 1 rows in (the last is [MASK])
    and logits over the vocabulary at every position out."""

    def __init__(self, config: GPTConfig):
        super().__init__(config, lambda c: nn.Embedding(c.vocab_size + 1, c.n_embd), causal=False)
        # Tied to the embedding's first vocab_size rows (Press & Wolf 2017) when tie_weights, as the GPT's head
        self.lm_head = None if config.tie_weights else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights()

    @property
    def mask_token(self) -> int:
        """The index of [MASK]: one past the codebook."""
        return self.config.vocab_size

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(hidden, self.transformer.wte.weight[:self.config.vocab_size])
        return self.lm_head(hidden)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per token over the positions that are not -1 (the masked ones)."""
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    def draw_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T) bool, True where a token is hidden: per row a share mask_ratio(u) of positions, u ~ U(0, 1), at
        least one, chosen uniformly."""
        t = self.config.block_size
        u = torch.rand(batch, 1, device=device, generator=generator)
        count = (mask_ratio(u, self.config.mask_schedule) * t).ceil().clamp(1, t)  # (B, 1)
        rank = torch.rand(batch, t, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
        return rank < count

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for every position of `tokens` (B, T), which may hold [MASK]. With `targets` (the
        clean tokens, training and the held-out loss): a drawn share of them masked first, and the loss on those.
        In eval mode the draw is seeded, so one held-out set always gets the same masks."""
        if tokens.size(1) != self.config.block_size:
            raise ValueError(f"the input has {tokens.size(1)} tokens; a masked model takes whole grids of "
                             f"block_size={self.config.block_size}")
        if targets is not None:
            generator = None if self.training else torch.Generator(tokens.device).manual_seed(0)
            mask = self.draw_mask(tokens.size(0), tokens.device, generator)
            tokens = tokens.masked_fill(mask, self.mask_token)
            targets = targets.masked_fill(~mask, -1)
        x = self.embed_sequence(cond, tokens)  # (B, 1 + T, C)
        logits = self.output(self.hidden_states(x)[:, 1:])  # (B, T, V): the condition position predicts nothing
        return logits, None if targets is None else self.loss(logits, targets)
