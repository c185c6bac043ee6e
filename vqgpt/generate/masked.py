"""Masked parallel decoding: a masked model (vqgpt/models/maskgit.py) fills a token grid in a few steps, each
fixing the tokens it is most confident of (MaskGIT, Chang et al. 2022, section 3.2).

    tokens = generate_masked(model, 16, cond=3, steps=8, seed=0)                   # (16, T), from nothing
    tokens = generate_masked(model, 4, cond=3, known=grid, region=hole, seed=0)   # only the hole is drawn

Every step predicts all the still-masked positions at once, draws a token for each (temperature, top_k, top_p,
guidance: the raster loop's options, per position), and keeps the most confident of them; the rest are masked
again for the next step. How many stay masked after step s of S follows the schedule, n * ratio((s + 1) / S), so
the last step fixes all; a token once fixed never changes. Confidence is the drawn token's log-probability plus
Gumbel noise scaled by confidence_noise * (1 - (s + 1) / S): MaskGIT's annealed randomness, which keeps early
steps from fixing only the likeliest (blank) tokens.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.errors import ArgumentError, UserError
from vqgpt.generate.sampling import _eval_mode, _prepare, _repeat, filter_logits
from vqgpt.models.heads import linear_guide
from vqgpt.models.maskgit import mask_ratio
from vqgpt.models.transformer import SCHEDULES

# callback(step, tokens, logits): after decoding step `step`; tokens (B, T) hold model.mask_token where still
# hidden (read them, don't write them); logits (B, T, V) are the guided predictions the step drew from.
MaskedCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

DEFAULT_STEPS = 8  # MaskGIT samples ImageNet 256 in 8 (FID 6.18); FID against steps: docs/masked.md
DEFAULT_NOISE = 4.5  # MaskGIT's choice temperature


def check_masked_args(steps: int, schedule: str, confidence_noise: float) -> None:
    """Refuse masked-decoding options that cannot work (ArgumentError naming the argument and the fix)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ArgumentError("steps", steps, "must be a positive integer (decoding steps; 8-12 is MaskGIT's range)")
    if schedule not in SCHEDULES:
        raise ArgumentError("schedule", schedule, f"must be one of {', '.join(SCHEDULES)}")
    if not (isinstance(confidence_noise, numbers.Real) and confidence_noise >= 0):
        raise ArgumentError("confidence_noise", confidence_noise, "must be >= 0 (0 = rank by log-probability alone)")


def remaining_masked(count: torch.Tensor, step: int, steps: int, schedule: str) -> torch.Tensor:
    """How many of `count` (B,) initially masked tokens are still masked after step `step` of `steps`: the
    schedule's share, at least one fewer each step while any are left, and none after the last."""
    ratio = mask_ratio(torch.tensor((step + 1) / steps), schedule)
    planned = (count * ratio).floor().long()
    return planned if step + 1 < steps else torch.zeros_like(planned)


@torch.no_grad()
def generate_masked(
    model: nn.Module,
    num_samples: int,
    cond: torch.Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float | None = None,
    seed: int | None = None,
    prefix: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    steps: int = DEFAULT_STEPS,
    schedule: str = "cosine",
    confidence_noise: float = DEFAULT_NOISE,
    callback: MaskedCallback | None = None,
) -> torch.Tensor:
    """(num_samples, block_size) tokens in `steps` parallel steps.

    cond, temperature, top_k, top_p, cfg_scale, seed: as `generate` (guidance mixes each position's logits,
    u + s * (c - u)). What is kept: `prefix` (B, P) fixes the first P tokens in raster order (completion), or
    `known` (B, T) tokens with `region` (B, T) bool, True where a token is drawn anew (editing); else all is drawn.
    """
    if model.causal:
        raise ValueError("generate_masked needs a masked model (gpt.name=maskgit); a raster GPT samples with "
                         "vqgpt.generate.sampling.generate")
    check_masked_args(steps, schedule, confidence_noise)
    run = _prepare(model, num_samples, cond, temperature, top_k, top_p, cfg_scale, seed, prefix)
    tokens, (batch, block_size) = run.tokens, run.tokens.shape
    positions = torch.arange(block_size, device=tokens.device)
    masked = (positions >= run.start).expand(batch, -1).clone()  # (B, T): True = still to draw
    if (known is None) != (region is None):
        raise UserError("known tokens and a region go together: pass both (editing), or neither")
    if known is not None:
        if prefix is not None:
            raise UserError("pass a prefix (completion) or known tokens with a region (editing), not both")
        known, masked = known.to(tokens.device).long(), region.to(tokens.device).bool().clone()
        if known.shape != (batch, block_size) or masked.shape != (batch, block_size):
            raise UserError(f"known tokens and region must both have shape ({batch}, {block_size}); got "
                            f"{tuple(known.shape)} and {tuple(masked.shape)}")
        if known.min() < 0 or known.max() >= model.config.vocab_size:
            raise UserError(f"known tokens must be in 0..{model.config.vocab_size - 1}; were they made by another "
                            "tokenizer?")
        tokens.copy_(known)
    tokens.masked_fill_(masked, model.mask_token)
    count = masked.sum(dim=1)  # (B,) tokens to draw per row
    with _eval_mode(model):
        for step in range(steps):
            logits = model(_repeat(tokens, run.copies), run.cond)[0]  # (B', T, V)
            logits = linear_guide(logits.float(), cfg_scale)  # (B, T, V)
            drawn, log_p = _draw_all(logits, temperature, top_k, top_p, run.generator)  # (B, T) each
            noise = confidence_noise * (1 - (step + 1) / steps)
            gumbel = -torch.empty_like(log_p).exponential_(generator=run.generator).log()
            confidence = (log_p + noise * gumbel).masked_fill(~masked, torch.inf)  # fixed tokens stay fixed
            left = masked.sum(dim=1)
            keep_masked = torch.minimum(remaining_masked(count, step, steps, schedule), (left - 1).clamp(min=0))
            rank = confidence.argsort(dim=1).argsort(dim=1)  # 0 = the least confident
            still = rank < keep_masked[:, None]  # only masked positions rank this low: fixed ones are +inf
            tokens = torch.where(masked & ~still, drawn, tokens)
            masked = still
            if callback is not None:
                callback(step, tokens, logits)
    return tokens


def _draw_all(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A token at every position (B, T) from logits (B, T, V), and its log-probability under the distribution it
    was drawn from (temperature and filters applied)."""
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = F.log_softmax(filter_logits(logits, top_k, top_p), dim=-1)
    # argmax of p_i / E_i, E_i ~ Exp(1), picks i with probability p_i (sample_next's draw, without a host sync)
    race = torch.empty_like(log_probs).exponential_(generator=generator)
    drawn = (log_probs.exp() / race).argmax(dim=-1)
    return drawn, log_probs.gather(-1, drawn[..., None])[..., 0]
