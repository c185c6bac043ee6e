"""The VQ-GAN tokenizer: model (encoder, quantizer, decoder), losses, PatchGAN discriminator."""

from vqgpt.tokenizers.vqgan.model import VQGAN

__all__ = ["VQGAN"]
