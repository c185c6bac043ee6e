"""Is bf16 autocast worth it on this CPU? Training steps of the demo GPT and a small VQ-GAN in fp32 and in bf16
autocast, interleaved, one thread; prints the medians and writes benchmarks/results/cpu_precision.json.

    python benchmarks/cpu_precision.py [--repeats 5] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vqgpt.config import GPTConfig, VQConfig, VQGANConfig
from vqgpt.device import autocast
from vqgpt.models.gpt import GPT
from vqgpt.tokenizers.vqgan.model import VQGAN


def gpt_step(precision: str):
    model = GPT(GPTConfig(vocab_size=512, block_size=49, num_classes=10, n_layer=4, n_head=4, n_embd=128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, labels = torch.randint(0, 512, (64, 49)), torch.randint(0, 10, (64,))
    mixed = autocast(torch.device("cpu"), precision)

    def step() -> None:
        with mixed:
            _, loss = model(tokens, labels, targets=tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def vqgan_step(precision: str):
    model = VQGAN(VQGANConfig(in_channels=1, image_size=28, channels=32, ch_mult=[1, 2], num_res_blocks=1,
                              z_channels=32, embed_dim=16, quantizer=VQConfig(num_codewords=512, embedding_dim=16)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(32, 1, 28, 28) * 2 - 1
    mixed = autocast(torch.device("cpu"), precision)

    def step() -> None:
        with mixed:
            x_rec, q = model(x)
            loss = (x_rec.float() - x).abs().mean() + q.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {}
    for name, build in (("gpt", gpt_step), ("vqgan", vqgan_step)):
        steps = {p: build(p) for p in ("fp32", "bf16")}
        times: dict[str, list[float]] = {p: [] for p in steps}
        for p in steps:
            steps[p]()  # warm-up
        for _ in range(args.repeats):  # interleaved A/B
            for p, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[p].append((time.perf_counter() - start) / args.steps)
        med = {p: statistics.median(t) for p, t in times.items()}
        results[name] = {"fp32_s_per_step": med["fp32"], "bf16_s_per_step": med["bf16"],
                         "bf16_speedup": med["fp32"] / med["bf16"]}
        print(f"{name}: fp32 {med['fp32'] * 1e3:.1f} ms/step, bf16 autocast {med['bf16'] * 1e3:.1f} ms/step, "
              f"bf16 speed-up {med['fp32'] / med['bf16']:.2f}x")
    out = Path(__file__).parent / "results" / "cpu_precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1,
            "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/cpu_precision.py"}
    out.write_text(json.dumps({**info, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
