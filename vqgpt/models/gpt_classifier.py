"""A pretrained GPT with a linear class head: Image GPT's fine-tuning (Chen et al. 2020, section 3.4).

    model = GPTClassifier(GPTClassifierConfig(gpt=gpt.config, gpt_arch="gpt", num_classes=10))
    logits, gen_loss = model(tokens)   # class logits (B, K) from the average-pooled final features, and the
                                       # GPT's own next-token loss on the same pass (the joint objective)
"""

from __future__ import annotations

import torch
from torch import nn

from vqgpt.config import GPTClassifierConfig
from vqgpt.errors import UserError
from vqgpt.registry import lookup, register_model


@register_model("gpt_classifier", GPTClassifierConfig)
class GPTClassifier(nn.Module):
    """GPT (unconditional: the null class token starts every sequence) -> mean over positions -> linear head."""

    def __init__(self, config: GPTClassifierConfig):
        super().__init__()
        if config.num_classes < 2:
            raise UserError(f"num_classes={config.num_classes}: classifying needs labelled data of 2 or more classes")
        self.config = config
        gpt_cls, _ = lookup(config.gpt_arch)
        self.gpt = gpt_cls(config.gpt)
        self.head = nn.Linear(config.gpt.n_embd, config.num_classes)
        nn.init.zeros_(self.head.weight)  # iGPT: the head starts at zero, so fine-tuning starts from the GPT
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, T[, D]) -> class logits (B, num_classes) and the GPT's mean loss on them."""
        x = self.gpt.embed_sequence(None, tokens[:, :-1])  # (B, T, C)
        hidden = self.gpt.hidden_states(x)  # (B, T, C), after the final LayerNorm
        return self.head(hidden.mean(dim=1)), self.gpt.loss(self.gpt.output(hidden), tokens)
