"""Class-balanced samples of a trained pipeline as one uint8 array, for FID computed elsewhere (fid.py).

    python benchmarks/gpu/samples.py GPT_CHECKPOINT OUT.npz [--num 10000] [--batch 1000] [--device cuda]

Writes images (N, H, W, C) uint8 and labels (N,) int64 (every class in turn), and prints the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import vqgpt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gpt", help="the GPT checkpoint (its tokenizer from the path it records)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--num", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = vqgpt.Pipeline.from_pretrained(args.gpt, device=args.device)
    start = time.perf_counter()
    images, labels = [], []
    classes = pipe.gpt.config.num_classes
    for i, first in enumerate(range(0, args.num, args.batch)):
        n = min(args.batch, args.num - first)
        batch_labels = [(first + j) % classes for j in range(n)] if classes else None
        x = pipe(batch_labels, num_images=n, seed=args.seed + i, batch_size=n, output_type="pt")  # [0, 1]
        images.append(x.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        labels.extend(batch_labels or [-1] * n)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=np.concatenate(images), labels=np.asarray(labels, dtype=np.int64))
    print(json.dumps({"samples": args.num, "seconds": seconds, "images_per_second": args.num / seconds,
                      "device": args.device, "file": str(args.out)}))


if __name__ == "__main__":
    main()
