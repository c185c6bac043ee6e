"""Look at a dataset before training on it: size, classes, pixel statistics and a grid of images.

    summary = inspect_dataset(run, out_dir)      # run: InspectDataRun; what scripts/inspect_data.py prints
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vqgpt.config import InspectDataRun
from vqgpt.data.datasets import build_dataset, dataset_info
from vqgpt.images import save_grid
from vqgpt.progress import progress


def inspect_dataset(run: InspectDataRun, out_dir: Path) -> dict:
    """Statistics of one split (printed and saved as summary.json) and a PNG grid of its first images."""
    dataset = build_dataset(run.dataset, run.split)
    info = dataset_info(run.dataset, dataset)
    loader = DataLoader(dataset, batch_size=run.batch_size, shuffle=False, num_workers=run.num_workers)

    # One pass (or the first max_images) for statistics; the grid is the first num_images.
    limit = len(dataset) if run.max_images is None else min(len(dataset), run.max_images)
    counts = torch.zeros(max(info["num_classes"], 1), dtype=torch.long)
    total, total_sq, lo, hi, seen = 0.0, 0.0, float("inf"), float("-inf"), 0
    grid = []
    num_batches = -(-limit // run.batch_size)
    for images, labels in progress(itertools.islice(loader, num_batches), total=num_batches, desc="reading"):
        images, labels = images[: limit - seen], labels[: limit - seen]
        if len(grid) * run.batch_size < run.num_images:
            grid.append(images)
        counts += torch.bincount(labels, minlength=counts.numel())[: counts.numel()]
        total += images.sum().item()
        total_sq += images.pow(2).sum().item()
        lo, hi = min(lo, images.min().item()), max(hi, images.max().item())
        seen += images.shape[0]

    pixels = seen * images[0].numel()
    mean = total / pixels
    std = (total_sq / pixels - mean**2) ** 0.5
    names = info["class_names"] or [str(i) for i in range(counts.numel())]
    summary = {
        **info,
        "split": run.split,
        "num_items": len(dataset),
        "num_read": seen,
        "shape": list(images.shape[1:]),
        "pixel_min": lo,
        "pixel_max": hi,
        "pixel_mean": mean,
        "pixel_std": std,
        "class_counts": {name: int(c) for name, c in zip(names, counts.tolist(), strict=True)},
    }
    grid_path = save_grid(torch.cat(grid)[: run.num_images], out_dir / f"{info['dataset']}_{run.split}.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    print(f"{info['dataset']} [{run.split}]: {len(dataset)} images of shape {summary['shape']}, "
          f"{info['num_classes']} classes")
    print(f"pixels over {seen} images: min {lo:.3f} max {hi:.3f} mean {mean:.3f} std {std:.3f}")
    width = max(len(n) for n in names)
    for name, count in summary["class_counts"].items():
        print(f"  {name:<{width}}  {count}")
    print(f"grid: {grid_path}")
    print(f"summary: {out_dir / 'summary.json'}")
    return summary
