"""Tokenizers: the interface every one implements (base.py), the VQ-GAN (vqgan/) and its quantizers."""

from vqgpt.tokenizers.base import Tokenizer

__all__ = ["Tokenizer"]
