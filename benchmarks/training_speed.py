"""Training speed: a vqgpt GPT training step against Hugging Face GPT-2 of the same size.

    pip install -e ".[bench]"                          # transformers, the peer
    python benchmarks/training_speed.py                # -> benchmarks/results/training_speed.json
    python benchmarks/training_speed.py --batch 8 --runs 7 --out /tmp/t.json

One step = forward, cross-entropy over the 256 tokens, backward, AdamW step, zero_grad; batch 8 by default, the
GPT of benchmarks/sampling_speed.py (8 layers x 512, vocab 1024, 256 tokens), fp32. The cases:
    vqgpt        GPT(...) with vqgpt's optimizer (vqgpt.train.optim.adamw: torch's multi-tensor AdamW, decay on
                 Linear weights only), what scripts/train_gpt.py runs on CPU
    vqgpt_fused  the same with fused=True (`trainer.fused_adamw`)
    hf           transformers' GPT2LMHeadModel(input_ids, labels) with torch.optim.AdamW (its defaults)
Times: the cases take turns step by step in one process (one thread by default), medians. Peak memory: each
case alone in a fresh child process, the peak resident set (CPU) or allocator peak (GPU) of three steps above
the memory the built model already held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    RESULTS_DIR,
    hf_gpt2,
    interleaved,
    median,
    now,
    package_version,
    peak_memory_mib,
    write_result,
)

from vqgpt.config import GPTConfig  # noqa: E402
from vqgpt.models.gpt import GPT  # noqa: E402
from vqgpt.train.optim import adamw  # noqa: E402

CASES = ("vqgpt", "vqgpt_fused", "hf")
LR, BETAS, WEIGHT_DECAY = 3e-4, (0.9, 0.95), 0.1


def build(case: str, args: argparse.Namespace, device: torch.device):
    """A step function of one case: (model, step) with the model on `device`, in train mode."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.tokens, num_classes=0, n_layer=args.layers,
                    n_head=args.heads, n_embd=args.width)
    tokens = torch.randint(0, args.vocab, (args.batch, args.tokens), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if case.startswith("vqgpt"):
        model = GPT(cfg).to(device).train()
        opt = adamw(model, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=case == "vqgpt_fused")
        net = torch.compile(model) if args.compile else model

        def loss() -> torch.Tensor:
            with autocast:
                return net(tokens, targets=tokens)[1]
    else:
        model = hf_gpt2(cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
        net = torch.compile(model) if args.compile else model

        def loss() -> torch.Tensor:
            with autocast:
                return net(input_ids=tokens, labels=tokens).loss

    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, step


def memory_child(case: str, args: argparse.Namespace) -> None:
    """Child process: print the peak memory (MiB) of three steps of `case` above the built model's."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    _, step = build(case, args, device)

    def three_steps() -> None:
        for _ in range(3):
            step()
    print(json.dumps({"peak_mib": peak_memory_mib(three_steps, device)}))


def child_memory(case: str) -> float | None:
    """Run this script for one case in a fresh process (nothing freed earlier hides in its resident set)."""
    out = subprocess.run([sys.executable, *sys.argv, "--memory-of", case], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7, help="timed steps per case (medians reported)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, both models")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the chip's dense peak for --precision (H100/H200 bf16: 989): reports MFU")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "training_speed.json")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory measurement (a fresh process per case)")
    parser.add_argument("--memory-of", choices=CASES, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.memory_of:
        return memory_child(args.memory_of, args)
    if package_version("transformers") is None:
        sys.exit('error: the Hugging Face peer needs transformers: pip install -e ".[bench]"')

    started = now()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models, steps = {}, {}
    for case in CASES:
        models[case], steps[case] = build(case, args, device)
    params = {case: sum(p.numel() for p in m.parameters()) for case, m in models.items()}
    times = interleaved(steps, args.runs, device, warmup=2)
    med = {case: median(values) for case, values in times.items()}
    tokens = args.batch * args.tokens
    memory = {case: child_memory(case) if args.memory else None for case in CASES}
    # Model FLOPs per token, PaLM's estimate (nanoGPT's too): 6 per weight (forward and backward) plus attention,
    # 12 * layers * width * tokens; MFU = achieved over the chip's peak.
    flops = {case: 6 * params[case] + 12 * args.layers * args.width * args.tokens for case in CASES}
    rows = [{"case": case, "median_seconds": med[case], "tokens_per_second": tokens / med[case],
             "speedup_vs_hf": med["hf"] / med[case], "peak_memory_mib": memory[case], "params": params[case],
             "mfu": None if not args.peak_tflops else flops[case] * tokens / med[case] / (args.peak_tflops * 1e12),
             "seconds": times[case]} for case in CASES]
    lines = ["| case | step ms | tokens/s | vs HF | peak memory MiB | MFU |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        mem = "-" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}"
        mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f} %"
        lines.append(f"| {row['case']} | {1000 * row['median_seconds']:.0f} | {row['tokens_per_second']:.0f} | "
                     f"{row['speedup_vs_hf']:.2f}x | {mem} | {mfu} |")
    table = "\n".join(lines)
    print(table)
    write_result(args.out, started, {
        "benchmark": "training_speed",
        "model": {"n_layer": args.layers, "n_embd": args.width, "n_head": args.heads, "vocab_size": args.vocab,
                  "block_size": args.tokens},
        "batch": args.batch, "device": str(device), "threads": args.threads, "runs": args.runs,
        "dtype": "bfloat16 autocast" if args.precision == "bf16" else "float32", "compile": args.compile,
        "peak_tflops": args.peak_tflops,
        "memory": "peak above the built model's memory over three steps, each case in a fresh process",
        "results": rows, "table_markdown": table,
    }, packages=("transformers",))


if __name__ == "__main__":
    main()
