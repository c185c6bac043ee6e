"""A small CNN image classifier, and the helpers that use it to pick the best of N sampled images.

    model = Classifier(ClassifierConfig(in_channels=1, image_size=28, num_classes=10))
    logits = model(images)                                   # images (B, C, H, W) in [-1, 1] -> (B, num_classes)
    scores = class_scores(model, images, labels)             # (B,) log p(label | image)
    best = best_of(candidates, scores.view(B, N))            # classifier-rejection sampling: (B, ...) winners

Rejection by a classifier's score trades diversity for class fidelity (Esser et al. 2021, VQGAN, sample with an
"acceptance rate" under a pretrained classifier): draw N candidates per image, keep the one the classifier finds
most like its class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.config import ClassifierConfig
from vqgpt.errors import UserError
from vqgpt.registry import register_model


def check_classifier_config(cfg: ClassifierConfig) -> None:
    """Refuse a config the model cannot be built from, naming the key, on one line."""
    for key in ("in_channels", "image_size", "num_classes"):
        if getattr(cfg, key) < 1:
            raise UserError(f"classifier.{key}={getattr(cfg, key)} must be a positive integer")
    if not cfg.channels or min(cfg.channels) < 1:
        raise UserError(f"classifier.channels={cfg.channels} must be a non-empty list of positive widths")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"classifier.dropout={cfg.dropout} must be in [0, 1)")


# ---------------------------------------------------------------------------------------------------------
# Building blocks


class ConvBlock(nn.Sequential):
    """conv 3x3 (stride 1 or 2) -> GroupNorm -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.GroupNorm(min(8, out_channels), out_channels),  # no batch statistics: eval == train behaviour
            nn.SiLU(),
        )


@register_model("classifier", ClassifierConfig)
class Classifier(nn.Module):
    """Two conv blocks per level (the first of a later level strides by 2), global average pool, linear head."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        check_classifier_config(config)
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_channels
        for level, out in enumerate(config.channels):
            layers += [ConvBlock(width, out, stride=1 if level == 0 else 2), ConvBlock(out, out)]
            width = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> class logits (B, num_classes)."""
        expected = (self.config.in_channels, self.config.image_size, self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(images.shape)}")
        x = self.features(images).mean(dim=(2, 3))  # (B, C)
        return self.head(self.dropout(x))


# ---------------------------------------------------------------------------------------------------------
# Helpers


@torch.no_grad()
def class_scores(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(B,) log p(label | image); labels None (unconditional samples) = the most likely class's log p."""
    log_probs = F.log_softmax(classifier(images).float(), dim=-1)  # (B, num_classes)
    if labels is None:
        return log_probs.max(dim=-1).values
    return log_probs.gather(1, labels.view(-1, 1).to(log_probs.device)).squeeze(1)


def best_of(candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """From candidates (B, N, ...) keep, per row, the one with the highest score (B, N): (B, ...)."""
    if scores.shape != candidates.shape[:2]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (B, N) of candidates {tuple(candidates.shape)}")
    best = scores.argmax(dim=1)  # (B,)
    return candidates[torch.arange(candidates.size(0), device=candidates.device), best.to(candidates.device)]
