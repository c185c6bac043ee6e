"""vqgpt: two-stage autoregressive image generation, a tokenizer (VQ-GAN) and a GPT over its tokens.

The quantizers are layers for your own models too:

    from vqgpt import VectorQuantize
    vq = VectorQuantize(num_codewords=1024, embedding_dim=256, cos_dist=True, proj_dim=8, penalty_weight=0.1,
                        init_method="latent_random")
    out = vq(z_e)                              # z_q, indices, loss, metrics
    codes = vq.quantize(z_e); z_q = vq.dequantize(codes)
"""

from vqgpt.tokenizers.quantizers import FSQ, Quantizer, QuantizerOutput, VectorQuantize

__all__ = ["FSQ", "Quantizer", "QuantizerOutput", "VectorQuantize"]
