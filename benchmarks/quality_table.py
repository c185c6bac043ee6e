"""The quality table: a quality run's eval.json files and stage times -> JSON under benchmarks/results/ and markdown.

    python benchmarks/quality_table.py outputs/quality_fashionmnist      # after benchmarks/quality_fashionmnist.sh

Every FID cell names its protocol by a letter, and FIDs whose protocol records differ get different letters
(vqgpt.eval.fid.fid_columns): never compare two numbers with different letters.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

from vqgpt.eval.fid import fid_columns

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """'2-core x86_64 CPU (torch 2.x)' or the GPU's name."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"{os.cpu_count()}-core {cpu_model()}, no GPU (torch {torch.__version__})"


def cpu_model() -> str:
    """'AMD EPYC' or the like, from /proc/cpuinfo (CPU timings depend on it); the architecture elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def build(run: Path) -> dict:
    """Everything the README table shows, read from `run` (the quality script's OUT folder)."""
    times = {r["stage"]: r for r in map(json.loads, (run / "times.jsonl").read_text().splitlines())}
    tok = json.loads((run / "eval_tokenizer" / "eval.json").read_text())
    gpt = json.loads((run / "eval_gpt" / "eval.json").read_text())
    samples = list(gpt["samples"])
    for sweep in sorted(run.glob("eval_gpt_*/eval.json")):  # more evaluations of the same GPT (a cfg sweep)
        samples += json.loads(sweep.read_text())["samples"]
    fids = [{"name": "rFID (tokenizer)", "fid": tok["rfid"], "protocol": tok["protocol"]}]
    fids += [{"name": "FID (GPT)", "cfg_scale": row["cfg_scale"], "fid": row["fid"], "protocol": row["protocol"],
              "noise_floor": row["fid_noise_floor"], "noise_floor_size": row["fid_noise_floor_size"]}
             for row in samples]
    letters = {}
    for letter, column in zip("ABCDEFGH", fid_columns(fids), strict=False):
        for i in column["rows"]:
            letters[i] = letter
    for i, row in enumerate(fids):
        row["protocol_id"] = letters[i]
    return {"date": datetime.date.today().isoformat(), "machine": machine(), "stages": times,
            "tokenizer": {k: tok[k] for k in ("rfid", "psnr", "ssim", "lpips", "usage", "perplexity", "num_images")},
            "gpt": {k: gpt[k] for k in ("loss", "bits_per_token", "bits_per_dim")}, "fids": fids}


def markdown(result: dict) -> str:
    """The README's table and its protocol notes."""
    t, g, s = result["tokenizer"], result["gpt"], result["stages"]
    rfid = result["fids"][0]
    lines = ["| stage | quality | train time |", "|---|---|---|",
             f"| tokenizer | rFID {rfid['fid']:.2f} [{rfid['protocol_id']}], PSNR {t['psnr']:.2f} dB, "
             f"SSIM {t['ssim']:.3f}, LPIPS {t['lpips']:.3f}, usage {t['usage']:.0%}, perplexity "
             f"{t['perplexity']:.0f} | {s['tokenizer']['seconds'] / 60:.0f} min |"]
    for row in result["fids"][1:]:
        scale = "no guidance" if row["cfg_scale"] is None else f"cfg_scale {row['cfg_scale']:g}"
        lines.append(f"| GPT | FID-{row['protocol']['num_samples']} {row['fid']:.2f} [{row['protocol_id']}] "
                     f"({scale}; noise floor {row['noise_floor']:.2f} at {row['noise_floor_size']} vs "
                     f"{row['noise_floor_size']}), {g['loss']:.3f} nats/token, {g['bits_per_dim']:.3f} bits/dim | "
                     f"{s['gpt']['seconds'] / 60:.0f} min |")
    lines.append("")
    seen = {}
    for row in result["fids"]:
        seen.setdefault(row["protocol_id"], row["protocol"])
    for letter, p in seen.items():
        lines.append(f"[{letter}] {p['reference']} ({p['reference_size']} images) vs {p['num_samples']} images, "
                     f"{p['class_balance']}; {p['implementation']}; weights sha256 {p['weights_sha256'][:12]}...; "
                     f"{p['resize']}; {p['input']}; {p['stats_dtype']} statistics.")
    lines.append(f"\n{result['machine']}, {result['date']}.")
    return "\n".join(lines)


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/quality_fashionmnist")
    result = build(run)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{run.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
