"""int8 sampling on the CPU: a copy of a GPT whose Linear layers compute in int8 (torch's dynamic quantization:
int8 weights, activations quantized on the fly per batch), for the weight-bound batch-1 decode loop.

    fast = quantize_int8(gpt)          # sampling.quantize=int8 in sample.py and evaluate.py
    tokens = generate(fast, 1, cond=3)

The token embedding, positions and LayerNorms stay fp32; a tied output head gets its own int8 copy of the
embedding. What it costs in quality (greedy tokens agreeing with fp32, FID-2k) and buys in speed against Hugging
Face with the same quantization: benchmarks/sampling_speed.py --int8, docs/speed.md.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from vqgpt.errors import UserError


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode, on the CPU) with every nn.Linear as a dynamically quantized int8 Linear."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise UserError(f"sampling.quantize=int8 is a CPU path (torch's dynamic int8 kernels), and the GPT is on "
                        f"{device}; on a GPU sample in bf16 (the default), or pass device=cpu")
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its dynamic int8 Linear is still torch's CPU path
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
