"""GPT over image tokens: a decoder-only transformer that writes a tokenizer's index grid one token at a time
(a VQ-GAN's codes or a pixel palette's colours; the shared core is vqgpt/models/transformer.py).

    model = GPT(cfg)                                  # cfg: GPTConfig, vocab/block/classes already filled
    logits, loss = model(tokens, labels, targets=tokens)   # training: logits[:, i] predicts tokens[:, i], CE
    cache = model.new_cache()                         # sampling (see vqgpt.generate.sampling.generate)
    logits = model.prefill(cond, prefix, cache)       # (B, V): the token after the prefix
    logits = model.decode_one(token, cache)           # (B, V): the token after that
    logits = model.decode_static(token, pos, cache)   # the same with static shapes, for torch.compile
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.models.transformer import Transformer
from vqgpt.registry import register_model


@register_model("gpt", GPTConfig)
class GPT(Transformer):
    """The transformer core with a token embedding table in and logits over the vocabulary out."""

    def __init__(self, config: GPTConfig):
        super().__init__(config, lambda c: nn.Embedding(c.vocab_size, c.n_embd))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:  # Press & Wolf 2017, "Using the Output Embedding to Improve Language Models"
            self.lm_head.weight = self.transformer.wte.weight
        self.init_weights()

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per token; -1 marks tokens left out."""
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
