"""A GPT's likelihood of a token split: mean cross-entropy in nats/token, bits/token and bits/dim."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader

from vqgpt.device import autocast


@torch.no_grad()
def test_loss(model: nn.Module, loader: DataLoader, device: torch.device, conditional: bool) -> float:
    """Mean cross-entropy (nats/token) over the whole split, in eval mode (no label dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for tokens, labels in loader:
        tokens = tokens.to(device)
        with autocast(device, "auto"):  # as training computes it (bf16 on a GPU that has it)
            _, loss = model(tokens, labels.to(device) if conditional else None, targets=tokens)
        total += loss.item() * tokens.numel()
        count += tokens.numel()
    model.train(was_training)
    return total / count


# What a patch GPT's loss is, by gpt.head
PATCH_LOSS_UNITS = {"mse": "MSE", "gaussian": "Gaussian NLL, nats/number", "mixture": "mixture NLL, nats/number",
                    "diffusion": "denoising loss, not a likelihood"}


def loss_unit(gpt: nn.Module) -> str | None:
    """How to read a loss that has no bits (a patch GPT's, a masked model's); None for a causal token GPT's."""
    if not gpt.is_discrete:
        return PATCH_LOSS_UNITS[gpt.config.head]
    return None if gpt.causal else "nats per masked token, not a likelihood: no bits/dim"


def loss_metrics(gpt: nn.Module, loss: float, image_dims: int) -> dict[str, float]:
    """A test loss with the units it is read in: nats/token, bits/token and bits/dim (bits per sub-pixel of the
    token stream: the image's channels x height x width) for index tokens; a patch GPT's loss is per number
    (its Gaussian NLL without the constant, or its MSE) and has no bits to count, nor has a masked model's (a
    cross-entropy on the tokens its draw masked: not a likelihood of the image)."""
    if not gpt.is_discrete or not gpt.causal:
        return {"loss": loss}
    bits_per_token = loss / math.log(2)
    return {"loss": loss, "bits_per_token": bits_per_token,
            "bits_per_dim": bits_per_token * gpt.config.block_size / image_dims}
