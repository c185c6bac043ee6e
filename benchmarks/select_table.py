"""The selection runs of benchmarks/select_fashionmnist.sh -> JSON and the tables of docs/quality.md.

    python benchmarks/select_table.py outputs/select_fashionmnist

Tokenizers: rFID-2k, PSNR, SSIM, LPIPS of evaluate.py on the val split (eval_<name>/eval.json). GPTs: FID-2k of
train_gpt.py's last evaluation on the val split (<name>/eval.json), with its val loss and size; sampling sweeps:
evaluate.py's FID-2k on the val split (sweep_<name>/eval.json). Every FID is against the 2,000 held-out training
images, none against the test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from bench_common import RESULTS_DIR, machine_line


def tokenizer_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("eval_*/eval.json")):
        result = json.loads(path.read_text())
        name = path.parent.name.removeprefix("eval_")
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())
        loss = cfg["tokenizer"]["loss"]
        rows.append({"name": name, "steps": cfg["trainer"]["max_steps"], "perceptual_weight": loss["perceptual_weight"],
                     "perceptual_net": loss.get("perceptual_net", "vgg"), "disc_start": loss["disc_start"],
                     **{k: result[k] for k in ("rfid", "psnr", "ssim", "lpips", "usage", "num_images")},
                     "protocol": result["protocol"]})
    return rows


def gpt_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*/eval.json")):
        result = json.loads(path.read_text())
        if "fid" not in result or path.parent.name.startswith("eval_"):
            continue
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
        g, t = cfg["gpt"], cfg["trainer"]
        rows.append({"name": path.parent.name, "tokenizer": Path(cfg["checkpoint_vae"]).parent.parent.name,
                     "shape": f"{g['n_layer']}x{g['n_embd']}", "steps": t["max_steps"], "batch_size": t["batch_size"],
                     "sampling": cfg.get("sampling"), "fid": result["fid"], "loss": result.get("loss"),
                     "bits_per_dim": result.get("bits_per_dim"), "protocol": result["fid_protocol"]})
    return rows


def sweep_rows(out: Path) -> list[dict]:
    """evaluate.py's FID-2k of a GPT at other sampling settings (sweep_<gpt>_<what>/eval.json)."""
    rows = []
    for path in sorted(out.glob("sweep_*/eval.json")):
        result = json.loads(path.read_text())
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
        for sample in result["samples"]:
            rows.append({"name": path.parent.name, "gpt": Path(cfg["checkpoint_gpt"]).parent.parent.name,
                         "sampling": cfg["sampling"], "cfg_scale": sample["cfg_scale"], "fid": sample["fid"],
                         "protocol": sample["protocol"]})
    return rows


def markdown(result: dict) -> str:
    lines = ["| tokenizer run | steps | rFID-2k | PSNR dB | SSIM | LPIPS |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['steps']} | {r['rfid']:.2f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['lpips']:.3f} |"
              for r in result["tokenizers"]]
    lines += ["", "| GPT run | over | shape | steps | FID-2k | val nats/token |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['tokenizer']} | {r['shape']} | {r['steps']} | {r['fid']:.2f} | {r['loss']:.3f} |"
              for r in result["gpts"]]
    lines += ["", "| sampling run | GPT | cfg_scale | FID-2k |", "|---|---|---:|---:|"]
    lines += [f"| {r['name']} | {r['gpt']} | {r['cfg_scale']} | {r['fid']:.2f} |" for r in result["sweeps"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="select_fashionmnist.sh's OUT folder")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "select_fashionmnist.json")
    args = parser.parse_args()
    result = {"machine": machine_line(), "split": "val (dataset.val_size=2000)",
              "tokenizers": tokenizer_rows(args.out), "gpts": gpt_rows(args.out), "sweeps": sweep_rows(args.out)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
