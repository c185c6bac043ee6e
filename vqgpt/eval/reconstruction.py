"""How well a tokenizer reconstructs a split through its tokens: PSNR, SSIM, LPIPS, codebook usage and
perplexity, and the reconstructions' rFID when given the split's FID statistics."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from vqgpt.eval.fid import FID
from vqgpt.eval.metrics import CodebookStats, lpips_distance, psnr, ssim
from vqgpt.progress import progress
from vqgpt.tokenizers import Tokenizer


@torch.no_grad()
def reconstruction_metrics(model: Tokenizer, dataset: Dataset, lpips_net: torch.nn.Module | None, device: torch.device,
             batch_size: int, num_workers: int = 0, fid: FID | None = None) -> dict[str, float | None]:
    """Reconstruct the whole split through the codes: PSNR, SSIM, LPIPS, codebook usage and perplexity
    (and rFID when `fid` holds the split's reference statistics)."""
    was_training = model.training
    model.eval()
    stats = CodebookStats(model.codebook_size) if model.is_discrete else None
    totals = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    count = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for x, _ in progress(loader, desc="eval"):
        x = x.to(device)
        indices = model.tokenize(x)
        x_rec = model.decode_tokens(indices)
        if stats is not None:
            stats.update(indices)
        totals["psnr"] += psnr(x, x_rec).sum().item()
        totals["ssim"] += ssim(x, x_rec).sum().item()
        if lpips_net is not None:
            totals["lpips"] += lpips_distance(lpips_net, x, x_rec).sum().item()
        if fid is not None:
            fid.update(x_rec)
        count += x.shape[0]
    model.train(was_training)
    results: dict[str, float | None] = {k: v / count for k, v in totals.items()}
    if lpips_net is None:
        results["lpips"] = None
    return {**results, **(stats.compute() if stats is not None else {}), "num_images": count}
