"""Quantizer comparison: the same small VQ-GAN trained with four quantizers, then scored on the test split.

    python benchmarks/tokenizer_quality.py                  # full Fashion-MNIST (60k/10k, Debian package)
    python benchmarks/tokenizer_quality.py --quick          # bundled fashionmnist_small (10k/2k), 1/5 the steps
    python benchmarks/tokenizer_quality.py --variants a b --steps 200 --out /tmp/q.json

Variants (K ~ 1024 codes each):
    a  vq      plain VQ-VAE: L2 look-up, codebook learned by the loss, no tricks (tokenizer/quantizer=vq)
    b  cosine  our recommended default (tokenizer/quantizer=cosine): cosine look-up in a factorised space,
               latent init, usage penalty, dead-code restarts
    c  peer    `VectorQuantize` of vector-quantize-pytorch with its own defaults (EMA codebook), behind our
               interface via `PeerVectorQuantize` below, registered as a benchmark-only quantizer schema
    d  fsq     finite scalar quantization, levels [8, 5, 5, 5] = 1000 codes (FSQ paper's choice for ~2^10)

Each variant is exactly `scripts/train_tokenizer.py` with Hydra overrides: the run config is composed with
Hydra's compose API and trained by the library's `train_tokenizer()` (what the script calls), which ends with the
test-split evaluation (PSNR, SSIM, LPIPS, codebook usage and perplexity of the test codes). Training is a
quantizer comparison: no perceptual loss and no GAN (LPIPS is still measured). Time per step is the median
interval between consecutive training forwards of the quantizer, measured in this process.

Prints a markdown table and writes JSON (default benchmarks/results/tokenizer_quality[_quick].json) with
the exact command, overrides, steps, versions, date and machine. Needs the `bench` extra for variant c:
pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    compose_run,
    now,
    package_version,
    quantizer_step_times,
    write_result,
)

from vqgpt.cli import make_run_dir  # noqa: E402
from vqgpt.config import (
    QUANTIZER_CONFIGS,
    EvaluateRun,
    FIDConfig,
    QuantizerConfig,
)
from vqgpt.errors import UserError
from vqgpt.eval.evaluate import evaluate_tokenizer
from vqgpt.tokenizers.quantizers import QUANTIZERS, Quantizer, QuantizerOutput
from vqgpt.train.tokenizer import train_tokenizer

PEER_NAME = "bench_vq_pytorch"  # benchmark-only quantizer: `tokenizer/quantizer=bench_vq_pytorch`

# ---------------------------------------------------------------------------------------------------------
# the outside peer behind our interface


@dataclass
class PeerConfig(QuantizerConfig):
    """The settings of vector-quantize-pytorch's `VectorQuantize` this comparison maps; the rest are the
    package's own defaults, and any other key is refused when the config is composed."""

    name: str = PEER_NAME
    num_codewords: int = 1024
    decay: float | None = 0.8  # the package's EMA decay
    beta: float = 1.0  # its commitment_weight


class PeerVectorQuantize(Quantizer):
    """vector-quantize-pytorch's `VectorQuantize` as a vqgpt `Quantizer` (benchmark only).

    Maps `decay` (EMA decay) and `beta` (its `commitment_weight`); everything else is the package's default.
    Usage, perplexity and dead codes come from our base class, so they are counted exactly as for our
    quantizers."""

    def __init__(self, cfg: PeerConfig):
        from vector_quantize_pytorch import VectorQuantize as PackageVQ

        super().__init__(cfg.num_codewords, cfg.usage_window)
        if cfg.decay is None:
            raise UserError(f"tokenizer.quantizer.decay is null: name={PEER_NAME} is an EMA codebook; set it "
                            f"(the package's default is 0.8)")
        self.cfg = cfg
        self.vq = PackageVQ(dim=cfg.embedding_dim, codebook_size=cfg.num_codewords, decay=cfg.decay,
                            commitment_weight=cfg.beta, accept_image_fmap=True)  # takes (B, D, H, W)

    def settings(self) -> dict:
        """The package settings that matter for this comparison, read back from the built module."""
        book = self.vq._codebook
        return {"decay": book.decay, "commitment_weight": self.vq.commitment_weight,
                "rotation_trick": self.vq.rotation_trick, "use_cosine_sim": self.vq.use_cosine_sim,
                "kmeans_init": not bool(book.initted), "threshold_ema_dead_code": book.threshold_ema_dead_code,
                "ema_update": book.ema_update, "learnable_codebook": self.vq.learnable_codebook}

    @torch.no_grad()
    def quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, H, W) -> code indices (B, H, W), long; never updates the codebook."""
        return self.vq(z, freeze_codebook=True)[1].long()

    def dequantize(self, indices: Tensor) -> Tensor:
        """Code indices (B, H, W) -> quantized latents (B, D, H, W)."""
        return self.vq.get_output_from_indices(indices)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize latents (B, D, H, W); in training mode the package updates its EMA codebook."""
        z_q, indices, loss = self.vq(z)  # (B, D, H, W), (B, H, W), scalar (commitment, already weighted)
        indices = indices.long()
        metrics = self._metrics(self._count(indices), self._dead_mask())
        if self.training:
            self.step += 1
        return QuantizerOutput(z_q.to(z.dtype), indices, loss.float(), metrics)


def register_peer() -> None:
    """Make `tokenizer/quantizer=bench_vq_pytorch` composable, buildable and loadable (idempotent)."""
    from hydra.core.config_store import ConfigStore

    QUANTIZERS[PeerConfig] = PeerVectorQuantize
    QUANTIZER_CONFIGS[PEER_NAME] = PeerConfig  # checkpoints of the peer's VQ-GAN rebuild it
    node = OmegaConf.structured(PeerConfig)
    node.embedding_dim = "${..embed_dim}"  # as the YAML presets do
    ConfigStore.instance().store(group="tokenizer/quantizer", name=PEER_NAME, node=node)


# ---------------------------------------------------------------------------------------------------------
# the variants and the shared run settings

K = 1024
VARIANTS: dict[str, tuple[str, list[str]]] = {  # key -> (name, overrides of scripts/train_tokenizer.py)
    "a": ("vq", ["tokenizer/quantizer=vq", f"tokenizer.quantizer.num_codewords={K}"]),
    "b": ("cosine", ["tokenizer/quantizer=cosine", f"tokenizer.quantizer.num_codewords={K}"]),
    # the package's defaults: EMA decay 0.8, commitment weight 1.0 (our beta)
    "c": ("peer", [f"tokenizer/quantizer={PEER_NAME}", f"tokenizer.quantizer.num_codewords={K}",
                   "tokenizer.quantizer.decay=0.8", "tokenizer.quantizer.beta=1.0"]),
    "d": ("fsq", ["tokenizer/quantizer=fsq", "tokenizer.quantizer.levels=[8,5,5,5]"]),  # K = 1000
}
FULL_STEPS = 1000
QUICK_STEPS = FULL_STEPS // 5


def shared_overrides(quick: bool, steps: int) -> list[str]:
    """Settings every variant shares: data, a small f=4 VQ-GAN (32x32 -> 8x8 tokens), K, no GAN/perceptual."""
    return [
        f"dataset={'fashionmnist_small' if quick else 'fashionmnist'}",
        "dataset.image_size=32", "dataset.resize=pad", "dataset.channels=1",
        "tokenizer.channels=32", "tokenizer.z_channels=32", "tokenizer.embed_dim=32", "tokenizer.ch_mult=[1,2,2]",
        "tokenizer.loss.perceptual_weight=0", f"tokenizer.loss.disc_start={steps + 1}",  # LPIPS only at eval
        f"trainer.max_steps={steps}", "trainer.batch_size=32", "trainer.lr=1e-3", "trainer.warmup_steps=100",
        "trainer.device=cpu", "trainer.num_workers=0", "trainer.seed=0", f"trainer.log_every={max(steps // 20, 1)}",
        f"trainer.eval_every={steps}", f"trainer.sample_every={steps}", f"trainer.checkpoint_every={steps}",
        "trainer.progress_bar=false", "logger=none",
    ]


def last_train_metrics(out_dir: Path) -> dict:
    """The last logged training row of metrics.jsonl (codebook/* over the last usage_window steps)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/loss" in r]
    return rows[-1] if rows else {}


def run_variant(key: str, quick: bool, steps: int, runs_dir: Path, rfid_images: int,
                extra: list[str] | None = None) -> dict:
    """Train and evaluate one variant (plus `extra` overrides, a tuning try); its results, settings and timings."""
    name, variant_overrides = VARIANTS[key]
    variant_overrides = variant_overrides + list(extra or [])
    out_dir = runs_dir / name
    overrides = shared_overrides(quick, steps) + variant_overrides + [f"out_dir={out_dir}"]
    run = compose_run(overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)  # a rerun starts a fresh log
    out_dir, config = make_run_dir(run)
    print(f"\n=== ({key}) {name}: python scripts/train_tokenizer.py {' '.join(variant_overrides)} ...", flush=True)
    start = time.perf_counter()
    with quantizer_step_times() as stamps:
        results = train_tokenizer(run, out_dir, config)
    wall = time.perf_counter() - start
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    train_log = last_train_metrics(out_dir)
    record = {
        "variant": key, "name": name, "overrides": variant_overrides, "num_codewords": results.get("num_codewords"),
        "test": results,
        "train_codebook_at_end": {k.removeprefix("codebook/"): v for k, v in train_log.items()
                                  if k.startswith("codebook/")},
        "train_rec_loss_at_end": train_log.get("train/rec_loss"),
        "sec_per_step_median": statistics.median(intervals) if intervals else None,
        "sec_per_step_mean": statistics.fmean(intervals) if intervals else None,
        "wall_seconds": wall,
        "run_dir": str(out_dir),
        "quantizer_config": config["tokenizer"]["quantizer"],
    }
    quantizer = record["quantizer_config"]
    record["num_codewords"] = quantizer.get("num_codewords") or math.prod(quantizer["levels"])  # FSQ: implicit
    if rfid_images:  # the first rfid_images test images and their reconstructions (statistics cached after (a))
        evaluation = EvaluateRun(stage="tokenizer", checkpoint_vae=str(out_dir / "checkpoints" / "last"),
                                 device="cpu", fid=FIDConfig(reference_size=rfid_images))
        with torch.no_grad():
            rfid = evaluate_tokenizer(evaluation, torch.device("cpu"))
        record["test"].update(rfid=rfid["rfid"], rfid_noise_floor=rfid["fid_noise_floor"])
        record["rfid_protocol"] = rfid["protocol"]
    if key == "c":  # read back from a fresh module: what "the package's defaults" were in this version
        record["peer_settings"] = PeerVectorQuantize(run.tokenizer.quantizer).settings()
    print(f"({key}) {name}: {record['sec_per_step_median']:.3f} s/step (median), {wall:.0f} s in all", flush=True)
    return record


# ---------------------------------------------------------------------------------------------------------
# report


def table(records: list[dict]) -> str:
    """The markdown results table."""
    base = next((r["sec_per_step_median"] for r in records if r["variant"] == "a"), None)
    lines = ["| variant | K | usage % | perplexity | PSNR dB | SSIM | LPIPS | rFID | s/step | vs (a) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        t = r["test"]
        lpips = f"{t['lpips']:.4f}" if t.get("lpips") is not None else "n/a"
        rfid = f"{t['rfid']:.2f}" if t.get("rfid") is not None else "n/a"
        ratio = f"{r['sec_per_step_median'] / base:.2f}x" if base else "-"
        lines.append(f"| ({r['variant']}) {r['name']} | {r['num_codewords']} | {100 * t['usage']:.1f} | "
                     f"{t['perplexity']:.1f} | {t['psnr']:.2f} | {t['ssim']:.4f} | {lpips} | "
                     f"{rfid} | "
                     f"{r['sec_per_step_median']:.3f} | {ratio} |")
    return "\n".join(lines)


def target_check(records: list[dict]) -> dict | None:
    """The issue's target for (b): test usage >= 99 % and PSNR at least the peer's (c)."""
    by = {r["variant"]: r for r in records}
    if "b" not in by:
        return None
    usage_ok = by["b"]["test"]["usage"] >= 0.99
    psnr_ok = by["b"]["test"]["psnr"] >= by["c"]["test"]["psnr"] if "c" in by else None
    return {"usage_ge_99": usage_ok, "psnr_ge_peer": psnr_ok, "met": bool(usage_ok and psnr_ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"fashionmnist_small, {QUICK_STEPS} steps")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per variant "
                        f"(default {FULL_STEPS}, --quick {QUICK_STEPS})")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra overrides for the "
                        "variants run (a tuning try), e.g. --variants b --set tokenizer.quantizer.reparam=true")
    parser.add_argument("--rfid-images", type=int, default=2000, help="rFID on this many test images and their "
                        "reconstructions (Inception is ~6 images/s on 2 CPU cores); 0 = off")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/"
                        "tokenizer_quality[_quick].json)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: on a small "
                        "shared machine, multi-threaded steps slow down many-fold whenever a neighbour is busy)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="run dirs (checkpoints, logs); default "
                        "outputs/benchmarks/tokenizer_quality[_quick]")
    args = parser.parse_args()
    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    suffix = "_quick" if args.quick else ""
    out = (args.out or RESULTS_DIR / f"tokenizer_quality{suffix}.json").resolve()
    runs_dir = (args.runs_dir or ROOT / "outputs" / "benchmarks" / f"tokenizer_quality{suffix}").resolve()
    if "c" in args.variants and package_version("vector-quantize-pytorch") is None:
        sys.exit('error: variant c needs vector-quantize-pytorch: pip install -e ".[bench]"')

    torch.set_num_threads(args.threads)
    register_peer()
    started = now()
    records = [run_variant(key, args.quick, steps, runs_dir, args.rfid_images, args.set) for key in args.variants]
    check = target_check(records)

    report = table(records)
    print("\n" + report)
    if check is not None:
        print(f"\ntarget for (b) (test usage >= 99 % and PSNR >= peer's): {check}")
    write_result(out, started, {
        "benchmark": "tokenizer_quality",
        "quick": args.quick,
        "steps": steps,
        "shared_overrides": shared_overrides(args.quick, steps) + ["out_dir=<runs_dir>/<variant name>"],
        "timing": "sec_per_step_*: intervals between consecutive training forwards of the quantizer "
                  "(one full generator step each), this process, all variants run one after another",
        "threads": args.threads,
        "target_b": check,
        "results": records,
        "table_markdown": report,
    }, packages=("vector-quantize-pytorch",))


if __name__ == "__main__":
    main()
