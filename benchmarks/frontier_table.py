"""The quality frontier: benchmarks/frontier_fashionmnist.sh's runs -> JSON, README's table and the FID-hours plot.

    python benchmarks/frontier_table.py outputs/frontier_fashionmnist

Reads each budget's eval.json files and stage times; writes benchmarks/results/frontier_fashionmnist.json and
docs/images/frontier_fashionmnist.png, and prints the markdown table. FID cells carry a protocol letter as in
vqgpt.eval.fid.fid_columns: numbers with different letters are different quantities.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from bench_common import machine_line

from vqgpt.eval.fid import fid_columns

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PLOT = ROOT / "docs" / "images" / "frontier_fashionmnist.png"
# The CPU recipe before the frontier (L1-only tokenizer, 2026-12-02): drawn grey for comparison, same protocol
BEFORE = RESULTS / "quality_fashionmnist.json"
ORDER = ("20min", "1h", "2h")  # the budgets, in the order of the table and joined in the plot; others (a variant
# of one, such as 1h_kl: continuous tokens) follow by name and are drawn as points of their own
TRAIN_STAGES = ("tokenizer", "gpt")  # what a budget counts (evaluation and the shared classifier do not)


def budget_row(run: Path) -> dict | None:
    """One budget's numbers, or None while it has no test evaluation yet."""
    tok_file, gpt_file = run / "eval_tokenizer" / "eval.json", run / "eval_gpt" / "eval.json"
    if not (tok_file.is_file() and gpt_file.is_file()):
        return None
    times = {r["stage"]: r for r in map(json.loads, (run / "times.jsonl").read_text().splitlines())}
    tok, gpt = json.loads(tok_file.read_text()), json.loads(gpt_file.read_text())
    sample = gpt["samples"][0]
    return {
        "budget": run.name,
        "train_seconds": {s: times[s]["seconds"] for s in TRAIN_STAGES if s in times},
        # a stage not timed alone in one piece: its time from per-step times measured alone (times.jsonl says how)
        "train_estimated": {s: times[s]["estimated"] for s in TRAIN_STAGES if times.get(s, {}).get("estimated")},
        "commands": {s: times[s]["command"] for s in times},
        # a KL tokenizer has no codebook (usage, perplexity) and a diffusion head no likelihood (bits/dim): None
        "tokenizer": {k: tok.get(k) for k in ("rfid", "psnr", "ssim", "lpips", "usage", "perplexity", "num_images")},
        "tokenizer_protocol": tok["protocol"],
        "gpt": {k: gpt.get(k) for k in ("loss", "bits_per_token", "bits_per_dim")},
        "fid": sample["fid"], "fid_protocol": sample["protocol"], "noise_floor": sample["fid_noise_floor"],
        "cfg_scale": sample["cfg_scale"], "class_accuracy": sample.get("class_accuracy"),
    }


def build(out: Path) -> dict:
    rows = [r for d in sorted(p for p in out.iterdir() if p.is_dir()) if (r := budget_row(d))]
    rows.sort(key=lambda r: (ORDER.index(r["budget"]) if r["budget"] in ORDER else len(ORDER), r["budget"]))
    fids = [{"fid": r["tokenizer"]["rfid"], "protocol": r["tokenizer_protocol"]} for r in rows]
    fids += [{"fid": r["fid"], "protocol": r["fid_protocol"]} for r in rows]
    letters = {}
    for letter, column in zip("ABCDEFGH", fid_columns(fids), strict=False):
        for i in column["rows"]:
            letters[i] = letter
    for i, r in enumerate(rows):
        r["rfid_protocol_id"], r["fid_protocol_id"] = letters[i], letters[len(rows) + i]
    return {"date": datetime.date.today().isoformat(), "machine": machine_line(), "budgets": rows}


def markdown(result: dict) -> str:
    lines = ["| budget | tokenizer: rFID, PSNR, LPIPS | GPT: bits/dim | FID-10k | class accuracy | train time |",
             "|---|---|---|---|---|---|"]
    for r in result["budgets"]:
        t, s = r["tokenizer"], r["train_seconds"]
        acc = "" if r["class_accuracy"] is None else f"{r['class_accuracy']:.1%}"
        est = {k: "~" if k in r.get("train_estimated", {}) else "" for k in TRAIN_STAGES}
        bpd = "-" if r["gpt"]["bits_per_dim"] is None else f"{r['gpt']['bits_per_dim']:.3f}"
        lines.append(f"| {r['budget']} | {t['rfid']:.2f} [{r['rfid_protocol_id']}], {t['psnr']:.2f} dB, "
                     f"{t['lpips']:.3f} | {bpd} | {r['fid']:.2f} "
                     f"[{r['fid_protocol_id']}] | {acc} | {est['tokenizer']}{s.get('tokenizer', 0) / 60:.0f} + "
                     f"{est['gpt']}{s.get('gpt', 0) / 60:.0f} min |")
    lines.append(f"\n{result['machine']}, {result['date']}.")
    return "\n".join(lines)


def before_point(path: Path = BEFORE) -> tuple[float, float] | None:
    """(hours, FID-10k) of the old L1-only recipe, or None."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    fid = next(f["fid"] for f in old["fids"] if f["name"] == "FID (GPT)" and f["protocol"]["num_samples"] == 10000)
    return (old["stages"]["tokenizer"]["seconds"] + old["stages"]["gpt"]["seconds"]) / 3600, fid


def plot(result: dict, path: Path, before: tuple[float, float] | None = None) -> None:
    """FID-10k against training hours (tokenizer + GPT), one point per budget; `before` drawn grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["budgets"]
    hours = [sum(r["train_seconds"].values()) / 3600 for r in rows]
    fid = [r["fid"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    line = [i for i, r in enumerate(rows) if r["budget"] in ORDER]
    ax.plot([hours[i] for i in line], [fid[i] for i in line], "o-", color="tab:blue", label="frontier recipes")
    others = [i for i in range(len(rows)) if i not in line]
    if others:
        ax.plot([hours[i] for i in others], [fid[i] for i in others], "D", color="tab:orange", label="variants")
    if before is not None:
        ax.plot(*before, "s", color="grey", label="before: L1-only tokenizer")
        ax.annotate(f"{before[1]:.1f}", before, textcoords="offset points", xytext=(6, -12), fontsize=8, color="grey")
    ax.legend(fontsize=8, loc="upper right")
    for h, f, r in zip(hours, fid, rows, strict=True):
        ax.annotate(f"{r['budget']}: {f:.1f}", (h, f), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(rows[0]["noise_floor"], color="grey", ls=":", lw=1)
    ax.text(0.01, rows[0]["noise_floor"], " noise floor", color="grey", fontsize=8, va="bottom",
            transform=ax.get_yaxis_transform())
    ax.set_xlabel(f"training hours ({result['machine'].split(',')[0]})")
    ax.set_ylabel("FID-10k (test split)")
    ax.set_title("Fashion-MNIST 32 px: FID against CPU training time", fontsize=9)
    ax.set_ylim(0, max(fid + [before[1] if before else 0]) * 1.15)
    ax.set_xlim(0, max(hours + [before[0] if before else 0]) * 1.3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="frontier_fashionmnist.sh's OUT folder")
    parser.add_argument("--json", type=Path, default=RESULTS / "frontier_fashionmnist.json")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    result = build(args.out)
    if not result["budgets"]:
        raise SystemExit(f"{args.out}: no budget has both evaluations yet (eval_tokenizer/, eval_gpt/)")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.plot, before_point())
    print(markdown(result))
    print(f"\nwrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
