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
        """Tokens (B, T[, D]) -> class logits (B, num_classes) and the GPT's mean loss on them (a masked model's on
        a second pass, with a drawn share of the tokens masked: on whole grids it would have nothing to predict)."""
        hidden = self.gpt.hidden_states(self.gpt.feature_input(tokens))  # (B, T or T + 1, C), after ln_f
        if self.gpt.causal:
            gen_loss = self.gpt.loss(self.gpt.output(hidden), tokens)
        else:
            gen_loss = self.gpt(tokens, None, targets=tokens)[1]
        return self.head(hidden.mean(dim=1)), gen_loss
