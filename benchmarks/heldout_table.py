"""The held-out check's numbers: benchmarks/heldout_digits.sh's run dir -> benchmarks/results/heldout_digits.json.

    python benchmarks/heldout_table.py outputs/heldout_digits

The tokenizer's test reconstruction, the GPT's held-out loss at each evaluation (and where trainer.keep_best and
trainer.early_stop put its best checkpoint and its stop), and the samples of both its checkpoints, best and last,
on the test split: FID of class-balanced samples and their class accuracy; and how near samples come to the
training images (benchmarks/nearest_train.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_common import RESULTS_DIR, git_state, machine_line, now

COMMAND = "bash benchmarks/heldout_digits.sh"
SAMPLE_KEYS = ("fid", "class_accuracy", "cfg_scale", "fid_noise_floor", "fid_noise_floor_size")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def gpt_checkpoint(out: Path, name: str) -> dict:
    """One GPT checkpoint's test numbers (evaluate.py's eval.json in out/eval_gpt_<name>)."""
    ev = read(out / f"eval_gpt_{name}" / "eval.json")
    step = read(out / "gpt" / "checkpoints" / name / "config.json")["step"]
    return {"step": step, "test_loss": ev["loss"], "bits_per_dim": ev.get("bits_per_dim"),
            "samples": [{k: s.get(k) for k in SAMPLE_KEYS} for s in ev["samples"]]}


def build(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "gpt" / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], "val_loss": r["val/loss"]} for r in rows if "val/loss" in r]
    train = [r for r in rows if "train/loss" in r]
    trained = read(out / "gpt" / "eval.json")
    tok = read(out / "eval_tokenizer" / "eval.json")
    return {
        "command": COMMAND,
        "date_utc": now().isoformat(timespec="seconds"),
        "machine": machine_line(),
        "versions": git_state(),
        "data": {split: len([p for p in (out / "data" / split).rglob("*") if p.is_file()])
                 for split in ("train", "test")},
        "tokenizer": {k: v for k, v in tok.items() if k != "protocol" and not isinstance(v, dict)},
        "gpt": {
            "val_loss_curve": curve,  # on the images the GPT stage holds out (dataset.val_size)
            "best": trained.get("best"),  # trainer.keep_best's choice
            "stopped_at": train[-1]["step"] if train else None,
            "last_train_loss": train[-1]["train/loss"] if train else None,
            "checkpoints": {name: gpt_checkpoint(out, name) for name in ("best", "last")},
        },
        # RMS pixel distance of samples (and, as the yardstick, of test images) to the nearest training image
        "nearest_train": read(out / "nearest_train.json") if (out / "nearest_train.json").is_file() else None,
        "fid_protocol": read(out / "eval_gpt_best" / "eval.json")["samples"][0]["protocol"],
        "rfid_protocol": tok.get("protocol"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="benchmarks/heldout_digits.sh's OUT (outputs/heldout_digits)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "heldout_digits.json")
    args = parser.parse_args()
    result = build(args.out)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    gpt = result["gpt"]
    for name, ckpt in gpt["checkpoints"].items():
        s = ckpt["samples"][0]
        print(f"GPT {name} (step {ckpt['step']}): test loss {ckpt['test_loss']:.3f}, FID {s['fid']:.2f}, "
              f"class accuracy {s['class_accuracy']:.3f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
