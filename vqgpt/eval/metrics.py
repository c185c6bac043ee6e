"""Image and codebook metrics: PSNR, SSIM, codebook usage and perplexity (images in [-1, 1])."""

from __future__ import annotations

import torch


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [-1, 1], measured on the [0, 1] scale."""
    mse = ((x.float() - y.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; 11x11 Gaussian window) of images in [-1, 1], on the [0, 1] scale."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # 1 s to import: on use

    x01, y01 = ((x.float() + 1) / 2).clamp(0, 1), ((y.float() + 1) / 2).clamp(0, 1)
    return structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none")


class CodebookStats:
    """Accumulates a histogram of code indices; reports usage (fraction of codes seen) and perplexity."""

    def __init__(self, num_codewords: int):
        self.counts = torch.zeros(num_codewords, dtype=torch.long)

    def update(self, indices: torch.Tensor) -> None:
        """Add a batch of indices (any shape)."""
        self.counts += torch.bincount(indices.flatten().cpu(), minlength=self.counts.numel())

    def compute(self) -> dict[str, float]:
        """`usage` in [0, 1] and `perplexity` = exp(entropy of the code histogram), at most K."""
        probs = self.counts.double() / self.counts.sum().clamp_min(1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
        return {"usage": (self.counts > 0).double().mean().item(), "perplexity": entropy.exp().item()}


def lpips_distance(lpips_net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS distance of images in [-1, 1]; grayscale is repeated to the 3 channels VGG expects."""
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    return lpips_net(x.contiguous(), y.contiguous()).flatten()
