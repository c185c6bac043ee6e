"""FID of a samples.npz (benchmarks/gpu/samples.py) against a dataset split, with the usual protocol record, on
this machine (FID's Inception needs bit-exact weights; the GPU machine has no copy of them).

    python benchmarks/gpu/fid.py outputs/gpu/samples.npz --dataset fashionmnist [--out fid.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vqgpt.config import DatasetConfig, FIDConfig  # noqa: E402
from vqgpt.eval.evaluate import build_fid, describe_balance  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path)
    parser.add_argument("--dataset", default="fashionmnist")
    parser.add_argument("--root", default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--resize", default="pad")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = np.load(args.samples)
    images, labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
    channels = images.shape[-1]
    cfg = DatasetConfig(name=args.dataset, root=args.root, image_size=args.image_size, channels=channels,
                        num_classes=None, resize=args.resize)
    fid = build_fid(FIDConfig(batch_size=args.batch, inception_score=False), cfg, torch.device("cpu"))
    for chunk in images.split(args.batch):
        fid.update(chunk.permute(0, 3, 1, 2).float() / 127.5 - 1)
    result = fid.compute(class_balance=describe_balance(labels if labels.min() >= 0 else None, None))
    result["samples"] = str(args.samples)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
