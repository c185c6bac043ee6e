"""Quantizers: one interface (base.py), one file and one config schema per implementation.

    from vqgpt import VectorQuantize, FSQ
    vq = VectorQuantize(num_codewords=1024, embedding_dim=256, cos_dist=True, proj_dim=8)
"""

from __future__ import annotations

from vqgpt.config import FSQConfig, KLConfig, QuantizerConfig, VQConfig
from vqgpt.tokenizers.quantizers.base import Quantizer, QuantizerOutput
from vqgpt.tokenizers.quantizers.fsq import FSQ
from vqgpt.tokenizers.quantizers.kl import KLBottleneck
from vqgpt.tokenizers.quantizers.vq import VectorQuantize

# KLBottleneck is not a quantizer but takes its place: the VQ-GAN then makes continuous tokens
QUANTIZERS: dict[type[QuantizerConfig], type] = {VQConfig: VectorQuantize, FSQConfig: FSQ, KLConfig: KLBottleneck}


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    """The quantizer a config schema stands for (VQConfig -> VectorQuantize, FSQConfig -> FSQ), checked."""
    if type(cfg) not in QUANTIZERS:
        raise TypeError(f"no quantizer for {type(cfg).__name__}; known: {', '.join(c.__name__ for c in QUANTIZERS)}")
    return QUANTIZERS[type(cfg)](cfg)


__all__ = ["FSQ", "KLBottleneck", "QUANTIZERS", "Quantizer", "QuantizerOutput", "VectorQuantize", "build_quantizer"]
