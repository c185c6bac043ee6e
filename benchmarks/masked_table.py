"""benchmarks/masked_fashionmnist.sh's runs -> benchmarks/results/masked_fashionmnist.json and README's table.

    python benchmarks/masked_table.py outputs/frontier_fashionmnist/20min/masked

Raster rows: the frontier's own GPT (its test FID-10k: <frontier>/eval_gpt) and its val FID-2k with the same
evaluate.py settings (benchmarks/select_fashionmnist.sh section 4: sweep_g_20min_seed0). Masked rows and int8:
<out>/eval_test, <out>/val_steps<N>, <out>/val_raster_int8; speeds: <out>/speed.json (benchmarks/masked_speed.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from bench_common import RESULTS_DIR, machine_line


def sample_row(path: Path) -> dict | None:
    """FID (and class accuracy) of an evaluate.py run, or None when it has not run."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text())["samples"][0]
    return {"fid": row["fid"], "class_accuracy": row.get("class_accuracy"),
            "num_samples": row["protocol"]["num_samples"], "reference": row["protocol"]["reference"]}


def changed_sampling(run_dir: Path) -> str:
    """The masked sampling options an evaluate.py run changed from the defaults, as "key value, ..."."""
    sampling = yaml.safe_load((run_dir / "config.yaml").read_text())["sampling"]
    return ", ".join(f"{k} {v}" for k, v in sampling.items()
                     if k in ("temperature", "confidence_noise", "schedule", "top_k", "top_p")
                     and v not in (None, 1.0 if k == "temperature" else None))


def cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--select", type=Path, default=Path("outputs/select_fashionmnist"))
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "masked_fashionmnist.json")
    args = parser.parse_args()
    frontier = args.out.parent
    speed = json.loads((args.out / "speed.json").read_text())
    per_batch = {row["batch"]: row["images_per_second"] for row in speed["results"]}
    rows = [{"model": "raster", "decoding": "64 steps (one per token)", "speed_key": "raster",
             "test": sample_row(frontier / "eval_gpt" / "eval.json"),
             "val": sample_row(args.select / "sweep_g_20min_seed0" / "eval.json")},
            {"model": "raster, int8", "decoding": "64 steps", "speed_key": "raster_int8", "test": None,
             "val": sample_row(args.out / "val_raster_int8" / "eval.json")}]
    for steps in (4, 8, 12, 16):
        rows.append({"model": "masked", "decoding": f"{steps} parallel steps", "speed_key": f"masked_{steps}",
                     "test": sample_row(args.out / "eval_test" / "eval.json") if steps == 8 else None,
                     "val": sample_row(args.out / f"val_steps{steps}" / "eval.json")})
    lines = ["| GPT (4 x 128, 0.83 M, 3,500 steps of 64) | decoding | FID-10k (test) | class accuracy | FID-2k (val) | "
             + " | ".join(f"images/s, batch {b}" for b in per_batch) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(per_batch)]
    # the sampling sweeps on the val split (masked_fashionmnist.sh section 3): 8 steps, one option changed; the
    # one chosen there, measured once on test (eval_test_chosen)
    chosen = args.out / "eval_test_chosen"
    chosen = changed_sampling(chosen) if chosen.is_dir() else None
    for path in sorted(args.out.glob("val_*/eval.json")):
        if path.parent.name.removeprefix("val_") in {f"steps{s}" for s in (4, 8, 12, 16)} | {"raster_int8"}:
            continue
        changed = changed_sampling(path.parent)
        test = sample_row(args.out / "eval_test_chosen" / "eval.json") if changed == chosen else None
        rows.append({"model": "masked", "decoding": f"8 parallel steps, {changed}", "speed_key": "masked_8",
                     "test": test, "val": sample_row(path)})
    for row in rows:
        key = row.pop("speed_key")
        row["images_per_second"] = {str(b): ips[key] for b, ips in per_batch.items()}
        test, val = row["test"], row["val"]
        fid_test, accuracy = (test["fid"], test["class_accuracy"]) if test else (None, None)
        speeds = row["images_per_second"]
        lines.append(f"| {row['model']} | {row['decoding']} | {cell(fid_test, '.2f')} | {cell(accuracy, '.1%')} | "
                     f"{cell(val and val['fid'], '.2f')} | "
                     + " | ".join(cell(speeds.get(str(b)), ".1f") for b in per_batch) + " |")
    agreement = speed["int8_agreement"]
    lines.append("")
    lines.append(f"int8 against fp32: next-token argmax agreement {agreement['teacher_forced_argmax_agreement']:.1%} "
                 f"(teacher-forced, {agreement['images']} val grids); greedy sequences identical in full "
                 f"{agreement['greedy_sequences_equal']:.0%}. {machine_line()}, {speed['threads']} thread.")
    table = "\n".join(lines)
    print(table)
    args.json.write_text(json.dumps({"machine": machine_line(), "rows": rows, "int8_agreement": agreement,
                                     "speed_command": speed["command"], "table_markdown": table}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
