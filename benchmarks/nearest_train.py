"""How close samples come to the training images: a copy check for a GPT trained on little data.

    python benchmarks/nearest_train.py outputs/heldout_digits/data --samples outputs/heldout_digits/samples/images

For every sample (sample.py's images/*.png) and, as the yardstick, every test image of a class-folder dataset: the
root-mean-square pixel distance (pixels in [0, 1]) to its nearest training image. Real images the model never saw
are as far from the training set as new images are; samples much nearer than that (below the test images'
5th percentile) are counted as near copies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from vqgpt.images import to_model_space, to_unit

COPY_QUANTILE = 0.05  # a sample nearer to the training set than 95 % of the test images is a near copy


def load(paths: list[Path]) -> torch.Tensor:
    """Grey images as an (N, H*W) float tensor in [0, 1]."""
    return to_unit(to_model_space([Image.open(p) for p in paths], channels=1)).flatten(1)


def nearest(queries: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Each query's RMS pixel distance to its nearest training image."""
    return (torch.cdist(queries, train).min(dim=1).values / queries.shape[1] ** 0.5)


def report(data: Path, sample_dirs: list[Path]) -> dict:
    train = load(sorted((data / "train").rglob("*.png")))
    test = nearest(load(sorted((data / "test").rglob("*.png"))), train)
    threshold = float(torch.quantile(test, COPY_QUANTILE))
    out = {"train_images": len(train), "test": {"images": len(test), "median": float(test.median()),
                                                "copy_threshold": threshold}}
    for d in sample_dirs:
        near = nearest(load(sorted(d.glob("*.png"))), train)
        out[str(d)] = {"images": len(near), "median": float(near.median()),
                       "near_copies": float((near < threshold).float().mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a class-folder dataset root with train/ and test/")
    parser.add_argument("--samples", type=Path, nargs="+", required=True, help="folders of sample PNGs")
    args = parser.parse_args()
    print(json.dumps(report(args.data, args.samples), indent=2))


if __name__ == "__main__":
    main()
