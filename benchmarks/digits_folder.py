"""A folder of images nobody tuned on, for the held-out check of the CPU recipes (benchmarks/heldout_digits.sh).

    python benchmarks/digits_folder.py outputs/heldout_digits/data

UCI's handwritten digits as scikit-learn ships them (`sklearn.datasets.load_digits`: 1,797 images of 8x8 pixels,
17 grey levels, 10 classes; in the wheel, no download), upscaled to 32x32 with bicubic interpolation and written
as PNGs the way a user's folder holds them: DIR/train/<digit>/NNNN.png and DIR/test/<digit>/NNNN.png, every
fifth image of each class in test (355 of the 1,797).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SIZE = 32
TEST_EVERY = 5


def write_folder(out: Path) -> dict[str, int]:
    """Write the PNGs under `out`; the number of images per split."""
    digits = load_digits()
    counts = {"train": 0, "test": 0}
    seen = np.zeros(10, dtype=int)
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "test" if seen[label] % TEST_EVERY == TEST_EVERY - 1 else "train"
        seen[label] += 1
        grey = Image.fromarray(np.uint8(np.round(image * (255 / 16))), mode="L")
        path = out / split / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grey.resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(path)
        counts[split] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (train/ and test/ under it)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: {args.out} is not empty; give a new folder")
    counts = write_folder(args.out)
    print(f"wrote {counts['train']} train and {counts['test']} test images under {args.out}")


if __name__ == "__main__":
    main()
