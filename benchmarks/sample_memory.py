"""sample.py at 1,000 and 10,000 images: peak memory, time to the first image file, and wall time.

    python benchmarks/sample_memory.py                   # -> benchmarks/results/sample_memory.json
    python benchmarks/sample_memory.py --images 1000 --out /tmp/m.json

Each size runs `scripts/sample.py` as its own process (what a user runs), on checkpoints of the demo's
architectures (`experiment=tokenizer_demo`, `experiment=gpt_demo`: 32x32 grayscale, 8x8 tokens, 10 classes) with
random weights, written once into a temporary folder; speed and memory do not depend on the weights. Peak
memory is the child's peak resident set (`os.wait4`). `--checkpoint-vae/--checkpoint-gpt` measure your own.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, ROOT, now, write_result  # noqa: E402

from vqgpt.checkpoint import save_checkpoint  # noqa: E402
from vqgpt.config import TrainGPTRun, register_configs, to_object  # noqa: E402
from vqgpt.data import dataset_info  # noqa: E402
from vqgpt.models.gpt import GPT  # noqa: E402
from vqgpt.tokenizers.vqgan.model import VQGAN  # noqa: E402


def demo_checkpoints(root: Path) -> tuple[Path, Path]:
    """Random-weight checkpoints of the demo tokenizer and GPT, as train_tokenizer.py / train_gpt.py save them."""
    from bench_common import compose_run
    from hydra import compose, initialize_config_dir

    from vqgpt.config import CONFIG_DIR

    torch.manual_seed(0)
    tok_run = compose_run(["experiment=tokenizer_demo"])
    tokenizer = VQGAN(tok_run.tokenizer).eval()
    data = tok_run.dataset
    save_checkpoint(root / "tok", tokenizer, stage="tokenizer", arch="vqgan", step=0,
                    meta={**dataset_info(data), **tokenizer.checkpoint_meta(),
                          "data_config": dataclasses.asdict(data)})
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        gpt_run: TrainGPTRun = to_object(compose("train_gpt", overrides=["experiment=gpt_demo"]))
    h, w = tokenizer.latent_grid
    cfg = dataclasses.replace(gpt_run.gpt, vocab_size=tokenizer.codebook_size, block_size=h * w,
                              num_classes=data.num_classes)
    save_checkpoint(root / "gpt", GPT(cfg).eval(), stage="gpt", arch="gpt", step=0,
                    meta={**dataset_info(data), "vocab_size": cfg.vocab_size, "block_size": cfg.block_size,
                          "latent_grid": [h, w]})
    return root / "tok", root / "gpt"


def run_sample(vae: Path, gpt: Path, per_class: int, run_dir: Path, threads: int) -> dict:
    """One sample.py process: peak RSS (MiB), seconds to the first image file, wall seconds, images written."""
    cmd = [sys.executable, str(ROOT / "scripts" / "sample.py"), f"checkpoint_vae={vae}", f"checkpoint_gpt={gpt}",
           f"sampling.num_samples={per_class}", "device=cpu", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    images = run_dir / "images"
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if first is None and images.is_dir() and any(images.glob("*.png")):
            first = time.perf_counter() - start
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: sample.py failed: {child.stderr.read().decode()[-2000:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds_to_first_image": first, "wall_seconds": wall,
            "images": len(list(images.glob("*.png"))), "command": " ".join(cmd[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000], help="images per run (10 classes)")
    parser.add_argument("--checkpoint-vae", type=Path, default=None)
    parser.add_argument("--checkpoint-gpt", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sample_memory.json")
    args = parser.parse_args()
    started = now()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vae, gpt = args.checkpoint_vae, args.checkpoint_gpt
        if vae is None or gpt is None:
            vae, gpt = demo_checkpoints(root)
        for n in args.images:
            row = {"requested_images": n, **run_sample(vae, gpt, max(1, n // 10), root / f"run_{n}", args.threads)}
            rows.append(row)
            print(f"{row['images']} images: peak {row['peak_rss_mib']:.0f} MiB, first file after "
                  f"{row['seconds_to_first_image']:.1f} s, {row['wall_seconds']:.0f} s in all", flush=True)
    lines = ["| images | peak memory MiB | first file after s | wall s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['images']} | {r['peak_rss_mib']:.0f} | {r['seconds_to_first_image']:.1f} | "
              f"{r['wall_seconds']:.0f} |" for r in rows]
    table = "\n".join(lines)
    print("\n" + table)
    write_result(args.out, started, {"benchmark": "sample_memory", "threads": args.threads,
                                     "models": "own checkpoints" if args.checkpoint_vae else
                                     "demo architectures, random weights", "results": rows,
                                     "table_markdown": table})


if __name__ == "__main__":
    main()
