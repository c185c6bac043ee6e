"""vqgpt: two-stage autoregressive image generation, a tokenizer (VQ-GAN) and a GPT over its tokens.

    pipe = vqgpt.Pipeline.from_pretrained("outputs/train_gpt/<run>/checkpoints/last")  # a folder or a Hub id too
    images = pipe(class_labels=[3, 3], temperature=0.9, top_k=100)

The quantizers are layers for your own models too:

    from vqgpt import VectorQuantize
    vq = VectorQuantize(num_codewords=1024, embedding_dim=256, cos_dist=True, proj_dim=8, penalty_weight=0.1,
                        init_method="latent_random")
    out = vq(z_e)                              # z_q, indices, loss, metrics
    codes = vq.quantize(z_e); z_q = vq.dequantize(codes)
"""

from __future__ import annotations

from typing import Any

__all__ = ["FSQ", "Pipeline", "Quantizer", "QuantizerOutput", "VectorQuantize"]


def __getattr__(name: str) -> Any:
    """The layers above, imported on first use (PEP 562): `import vqgpt.cli` stays quick, without torch, so
    a command-line mistake is reported in a second."""
    if name == "Pipeline":
        from vqgpt.generate.pretrained import Pipeline

        return Pipeline
    if name in __all__:
        from vqgpt.tokenizers import quantizers

        return getattr(quantizers, name)
    raise AttributeError(f"module 'vqgpt' has no attribute {name!r}")
