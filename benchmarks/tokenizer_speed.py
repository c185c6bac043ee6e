"""Tokenizer speed: encode and decode images/s, and training images/s without and with LPIPS and the GAN.

    python benchmarks/tokenizer_speed.py               # -> benchmarks/results/tokenizer_speed.json
    python benchmarks/tokenizer_speed.py --steps 10 --runs 1 --out /tmp/t.json
    python benchmarks/tokenizer_speed.py --experiment tokenizer_fashionmnist_20min --batch 32 \
        --out benchmarks/results/tokenizer_speed_20min.json    # the 20-minute recipe's VQ-GAN (docs/quality.md)

The VQ-GAN that `python scripts/train_tokenizer.py dataset=cifar10` trains (tokenizer=small, 32x32 RGB), here on
the synthetic `patterns` data of the same size, so nothing is downloaded. Encode = `tokenize` (images -> codes),
decode = `decode_tokens` (codes -> images), batch 64, eval mode, taking turns. Training = the library's
`train_tokenizer()` (the script's loop: data, generator step, discriminator step) for `--steps` timed steps after
`--warmup` steps, batch 64, in six settings:
    l1              reconstruction loss and the quantizer's only (perceptual_weight=0, no discriminator)
    lpips           + LPIPS perceptual loss (the default recipe before disc_start)
    lpips_gan       + the patch discriminator from step 0 (the default recipe after disc_start)
    lpips_alex      LPIPS through AlexNet's trunk instead of VGG16's (tokenizer.loss.perceptual_net=alex)
    lpips_alex_gan  the same + the discriminator
    lpips_gan_channels_last  lpips_gan with trainer.channels_last=true (GroupNorm may convert layouts back and
                    forth: measured, not assumed, before recommending it on a GPU)
`--experiment NAME` trains that experiment's tokenizer instead (its model and loss settings, patterns data of its
image size and channels).
Step time = the median interval between consecutive training steps; the settings take turns run by run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    RESULTS_DIR,
    compose_run,
    interleaved,
    median,
    now,
    quantizer_step_times,
    write_result,
)

from vqgpt.cli import make_run_dir  # noqa: E402
from vqgpt.tokenizers.vqgan.model import VQGAN  # noqa: E402
from vqgpt.train.tokenizer import train_tokenizer  # noqa: E402

SETTINGS = {
    "l1": ["tokenizer.loss.perceptual_weight=0", "tokenizer.loss.disc_start=1000000"],
    "lpips": ["tokenizer.loss.perceptual_weight=1.0", "tokenizer.loss.disc_start=1000000"],
    "lpips_gan": ["tokenizer.loss.perceptual_weight=1.0", "tokenizer.loss.disc_start=0"],
    "lpips_alex": ["tokenizer.loss.perceptual_weight=1.0", "tokenizer.loss.perceptual_net=alex",
                   "tokenizer.loss.disc_start=1000000"],
    "lpips_alex_gan": ["tokenizer.loss.perceptual_weight=1.0", "tokenizer.loss.perceptual_net=alex",
                       "tokenizer.loss.disc_start=0"],
    "lpips_gan_channels_last": ["tokenizer.loss.perceptual_weight=1.0", "tokenizer.loss.disc_start=0",
                                "trainer.channels_last=true"],
}


def base_overrides(args: argparse.Namespace) -> list[str]:
    steps = args.warmup + args.steps
    model = [f"experiment={args.experiment}", "dataset.val_size=0"] if args.experiment else [
        f"tokenizer={args.tokenizer}"]
    return model + ["dataset=patterns", f"dataset.num_train={steps * args.batch}", "dataset.num_test=64",
            f"trainer.max_steps={steps}", f"trainer.batch_size={args.batch}",
            f"trainer.device={args.device}", "trainer.num_workers=0", f"trainer.num_threads={args.threads}",
            f"trainer.log_every={steps}", f"trainer.eval_every={steps}", f"trainer.sample_every={steps}",
            f"trainer.checkpoint_every={steps}", "trainer.progress_bar=false", "logger=none"]


def train_seconds_per_step(overrides: list[str], runs_dir: Path, warmup: int) -> list[float]:
    """Intervals between consecutive training steps of one short `train_tokenizer()` run, after `warmup`."""
    run = compose_run(overrides + [f"out_dir={runs_dir}"])
    out_dir, config = make_run_dir(run)
    with quantizer_step_times() as stamps:
        train_tokenizer(run, out_dir, config)
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="small", help="configs/tokenizer/<name>.yaml")
    parser.add_argument("--experiment", help="configs/experiment/<name>.yaml instead of --tokenizer")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (encode/decode: timed calls)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "tokenizer_speed.json")
    args = parser.parse_args()
    started = now()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    run = compose_run(base_overrides(args))
    model = VQGAN(run.tokenizer).to(device).eval()
    x = torch.rand(args.batch, run.tokenizer.in_channels, run.tokenizer.image_size, run.tokenizer.image_size,
                   device=device) * 2 - 1
    codes = model.tokenize(x)
    with torch.no_grad():
        times = interleaved({"encode": lambda: model.tokenize(x), "decode": lambda: model.decode_tokens(codes)},
                            args.runs * 5, device)
    rows = [{"what": name, "images_per_second": args.batch / median(t), "median_seconds": median(t), "seconds": t}
            for name, t in times.items()]

    steps: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, extra in SETTINGS.items():
                steps[name] += train_seconds_per_step(base_overrides(args) + extra, Path(tmp) / f"{name}_{i}",
                                                      args.warmup)
    for name, t in steps.items():
        rows.append({"what": f"train_{name}", "images_per_second": args.batch / median(t),
                     "median_seconds": median(t), "seconds": t})
    base = next(r for r in rows if r["what"] == "train_l1")["median_seconds"]
    lines = ["| what | images/s | ms per batch | cost vs l1 |", "|---|---:|---:|---:|"]
    for r in rows:
        cost = f"{r['median_seconds'] / base:.2f}x" if r["what"].startswith("train") else "-"
        lines.append(f"| {r['what']} | {r['images_per_second']:.1f} | {1000 * r['median_seconds']:.0f} | {cost} |")
    table = "\n".join(lines)
    print("\n" + table)
    write_result(args.out, started, {
        "benchmark": "tokenizer_speed", "tokenizer": args.tokenizer, "experiment": args.experiment, "batch": args.batch,
        "image": [run.tokenizer.in_channels, run.tokenizer.image_size, run.tokenizer.image_size],
        "params": sum(p.numel() for p in model.parameters()), "device": str(device), "threads": args.threads,
        "settings": SETTINGS, "results": rows, "table_markdown": table,
    })


if __name__ == "__main__":
    main()
