"""Rebuild the bundled `vqgpt/assets/fashionmnist_small.npz` from full Fashion-MNIST idx files.

    apt-get install dataset-fashion-mnist     # or any folder with the four idx .gz files
    python scripts/make_fashionmnist_small.py [--src /usr/share/datasets/fashion-mnist]

Keeps the first 1,000 images of each class of the training set and the first 200 of each class of the
test set, in file order, so the subset is class-balanced and the same on every machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vqgpt.data import read_idx

ASSET = Path(__file__).resolve().parent.parent / "vqgpt" / "assets" / "fashionmnist_small.npz"


def first_per_class(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` items of every class, kept in their original order."""
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
    return images[keep], labels[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args()
    split = {}
    for name, prefix, per_class in (("train", "train", 1000), ("test", "t10k", 200)):
        images = read_idx(args.src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.src / f"{prefix}-labels-idx1-ubyte.gz")
        split[f"{name}_images"], split[f"{name}_labels"] = first_per_class(images, labels, per_class)
    np.savez_compressed(args.out, **split)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in split.items()))


if __name__ == "__main__":
    main()
