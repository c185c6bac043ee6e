"""What a GPT training step costs with each head: the frontier's GPT over VQ codes against the same transformer
with a mixture or a diffusion head over a KL autoencoder's latents (what sets the continuous rows' steps at a
fixed time budget: experiment=gpt_fashionmnist_1h_kl).

    python benchmarks/head_step_cost.py                  # -> benchmarks/results/head_step_cost.json
    python benchmarks/head_step_cost.py --runs 5 --out /tmp/h.json

One step = forward, the head's loss, backward, AdamW step, zero_grad, at the frontier's shape: 4 layers x 128,
class-conditional, 8x8 = 64 tokens, batch 64, fp32, on the CPU. The cases take turns step by step in one process
(one thread by default), so a busy spell of a shared machine hits them all; medians, and each case's ratio to the
VQ step.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, interleaved, median, now, write_result  # noqa: E402

from vqgpt.config import GPTConfig  # noqa: E402
from vqgpt.models.gpt import GPT  # noqa: E402
from vqgpt.models.patch_gpt import PatchGPT  # noqa: E402
from vqgpt.train.optim import adamw  # noqa: E402

BASE = GPTConfig(block_size=64, num_classes=10, n_layer=4, n_head=4, n_embd=128)
LATENTS = {"token_dim": 4, "vocab_size": 0}  # a KL autoencoder's tokens: 4 numbers, no codebook


def diffusion(width: int, depth: int, draws: int) -> dict:
    return {**LATENTS, "head": "diffusion", "diffusion_width": width, "diffusion_depth": depth,
            "diffusion_batch_mul": draws}


# name -> the config's changes: VQ codes (K=256) or 4-number latents with a head
CASES = {
    "vq_codes": {"vocab_size": 256},
    "mixture_8": {**LATENTS, "head": "mixture", "num_mixtures": 8},
    "diffusion_128x2_draws4": diffusion(128, 2, 4),
    "diffusion_256x3_draws1": diffusion(256, 3, 1),
    "diffusion_256x3_draws4": diffusion(256, 3, 4),
}


def step_fn(changes: dict, batch: int) -> tuple[Callable[[], None], nn.Module]:
    """A training step of one case on fixed random data, and the model it trains."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(BASE, **changes)
    model = (GPT if cfg.vocab_size else PatchGPT)(cfg).train()
    opt = adamw(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    labels = torch.randint(0, cfg.num_classes, (batch,))
    if cfg.vocab_size:
        tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    else:
        tokens = torch.randn(batch, cfg.block_size, cfg.token_dim)

    def step() -> None:
        _, loss = model(tokens, labels, targets=tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20, help="timed steps per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "head_step_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = now()
    built = {name: step_fn(changes, args.batch) for name, changes in CASES.items()}
    times = interleaved({name: fn for name, (fn, _) in built.items()}, args.runs, torch.device("cpu"), warmup=2)
    base = median(times["vq_codes"])
    rows = {name: {"ms_per_step": 1000 * median(t), "ratio_to_vq": median(t) / base,
                   "parameters": sum(p.numel() for p in built[name][1].parameters()), "config": CASES[name]}
            for name, t in times.items()}
    for name, r in rows.items():
        print(f"{name:>24}: {r['ms_per_step']:7.1f} ms/step, {r['ratio_to_vq']:.2f}x the VQ step, "
              f"{r['parameters'] / 1e6:.2f} M parameters")
    write_result(args.out, started, {"batch": args.batch, "threads": args.threads, "runs": args.runs,
                                     "shape": "4 layers x 128, 64 tokens, class-conditional, fp32", "cases": rows})


if __name__ == "__main__":
    main()
