"""The side-by-side table: benchmarks/compare_fashionmnist.sh's outputs -> JSON under benchmarks/results/, the
markdown table, and the figures docs/images/compare_fashionmnist.png (samples) and pixel_completion.png.

    python benchmarks/compare_table.py outputs/compare
"""

from __future__ import annotations

import datetime
import itertools
import json
import statistics
import sys
from pathlib import Path

import yaml
from bench_common import git_state, machine
from PIL import Image, ImageDraw

from vqgpt.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RESULTS, IMAGES = ROOT / "benchmarks" / "results", ROOT / "docs" / "images"
NAMES = {"vq": "VQ-GAN codes", "pixel": "pixel palette", "patch": "patches, Gaussian head",
         "patch_t05": "patches, Gaussian head, temperature 0.5", "patch_mse": "patches, MSE head",
         "patch_mixture": "patches, mixture head (8 Gaussians)", "patch_diffusion": "patches, diffusion head",
         "kl_mixture": "KL latents, mixture head (8 Gaussians)", "kl_diffusion": "KL latents, diffusion head"}
GPT_RUN = {"patch_t05": "patch"}  # another evaluation of that run's GPT


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def build(out: Path, previous: dict | None) -> dict:
    """One row per GPT, from its run dirs under `out`; a row not run there (ROWS=... in the script) is kept from
    the `previous` JSON, with the date it was measured."""
    times = {r["stage"]: r["seconds"] for r in map(json.loads, (out / "times.jsonl").read_text().splitlines())}
    rows = {}
    for name in NAMES:
        ev = read(out / f"{name}_eval" / "eval.json")
        if ev is None:
            if previous and name in previous["rows"]:
                rows[name] = {"date": previous["date"], **previous["rows"][name]}
            continue
        run = out / f"{GPT_RUN.get(name, name)}_gpt"
        gpt = load_checkpoint(run / "checkpoints" / "last")
        config = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
        tok = read(Path(gpt.meta["tokenizer_path"]).parent.parent / "eval.json") or {}
        trainer = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
        batch = trainer["batch_size"] * trainer["grad_accum"]
        first = ev["samples"][0]
        probe = read(out / f"{name}_probe" / "eval.json")  # none for another evaluation of the same GPT
        finetune = read(out / f"{name}_finetune" / "eval.json")
        h, w = gpt.meta["latent_grid"]
        # the training loop's own clock: the median seconds per step between logged steps (robust to a burst of
        # other work on the machine; the stage's wall time also holds start-up, the token cache and evaluation)
        logged = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                  if "train/loss" in row]
        step_seconds = statistics.median((b["time"] - a["time"]) / (b["step"] - a["step"])
                                         for a, b in itertools.pairwise(logged))
        rows[name] = {
            "date": datetime.date.today().isoformat(), "tokens": NAMES[name], "tokens_per_image": h * w,
            "vocab_or_width": gpt.model.config.vocab_size or f"{gpt.model.config.token_dim} numbers",
            "gpt_params": sum(p.numel() for p in gpt.model.parameters()),
            "tokenizer_psnr": tok.get("psnr"), "test_loss": ev["loss"], "bits_per_dim": ev.get("bits_per_dim"),
            "sampling": yaml.safe_load((out / f"{name}_eval" / "config.yaml").read_text())["sampling"],
            "fid": first["fid"], "fid_protocol": first["protocol"], "fid_noise_floor": first["fid_noise_floor"],
            "fid_noise_floor_size": first["fid_noise_floor_size"],
            "probe_accuracy": probe and probe["test_accuracy"], "probe_layer": probe and probe["layer"],
            "probe_images": probe and [probe["train_images"], probe["test_images"]],
            "finetune_accuracy": finetune and finetune["test_accuracy"],
            "stage_seconds": times.get(f"{GPT_RUN.get(name, name)}_gpt"), "train_seconds_per_step": step_seconds,
            "train_ms_per_image": step_seconds * 1000 / batch,
            "sample_ms_per_image": first["seconds"] * 1000 / first["protocol"]["num_samples"],
            "gpt_config": config["model_config"], "likelihood": gpt.model.is_discrete or gpt.model.likelihood,
        }
    return {"date": datetime.date.today().isoformat(), "machine": machine(), "git": git_state(),
            "command": "bash benchmarks/compare_fashionmnist.sh", "rows": rows}


def markdown(result: dict) -> str:
    def f(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = ["| tokens | per image | tokenizer PSNR | bits/dim | NLL, nats/number | FID-2k | linear probe | fine-tuned "
             "| train ms/image | sample ms/image (with FID's Inception) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"].values():
        psnr = "lossless" if (row["tokenizer_psnr"] or 0) >= 100 else f"{f(row['tokenizer_psnr'], '.1f')} dB"
        # a continuous head's loss is a likelihood (per number, 0.5 log 2 pi left out) for the Gaussian and mixture
        nll = row["test_loss"] if row["bits_per_dim"] is None and row.get("likelihood", "Gaussian" in row["tokens"]) \
            else None
        lines.append(f"| {row['tokens']} | {row['tokens_per_image']} | {psnr} | "
                     f"{f(row['bits_per_dim'], '.3f')} | {f(nll, '.3f')} | {row['fid']:.1f} | "
                     f"{f(row['probe_accuracy'], '.1%')} | "
                     f"{f(row['finetune_accuracy'], '.1%')} | "
                     f"{row['train_ms_per_image']:.1f} | {row['sample_ms_per_image']:.1f} |")
    first = next(iter(result["rows"].values()))
    cpu = f"{result['machine']['cpu_count']}-core {result['machine']['processor']}"
    lines.append(f"\nFID-2k: 2,000 unconditional samples against the 10,000 test images; its noise floor (FID between "
                 f"two halves of the test set) is {first['fid_noise_floor']:.2f}. {result['machine'].get('gpu', cpu)}; "
                 f"measured {', '.join(sorted({row.get('date', result['date']) for row in result['rows'].values()}))}.")
    return "\n".join(lines)


def figures(out: Path) -> list[Path]:
    """The unconditional sample grids side by side under their names (compare_fashionmnist.png; when the VQ row was
    not run this time, compare_continuous_fashionmnist.png of the rows that were); the pixel GPT's completions."""
    shown = [n for n in NAMES if n != "patch_t05" and (out / f"{n}_sample" / "samples.png").exists()]
    grids = [(NAMES[n], Image.open(out / f"{n}_sample" / "samples.png").convert("RGB")) for n in shown]
    figure = IMAGES / ("compare_fashionmnist.png" if "vq" in shown else "compare_continuous_fashionmnist.png")
    written = []
    if grids:
        scale, gap, title = 3, 12, 22
        width = sum(g.width * scale for _, g in grids) + gap * (len(grids) - 1)
        height = max(g.height * scale for _, g in grids) + title
        sheet = Image.new("RGB", (width, height), "white")
        draw, x = ImageDraw.Draw(sheet), 0
        for name, grid in grids:
            sheet.paste(grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST), (x, title))
            draw.text((x + 4, 4), name, fill="black")
            x += grid.width * scale + gap
        sheet.save(figure)
        written.append(figure)
    completion = out / "pixel_sample" / "completion.png"
    if completion.exists():
        image = Image.open(completion)
        image.resize((image.width * 3, image.height * 3), Image.NEAREST).save(IMAGES / "pixel_completion.png")
        written.append(IMAGES / "pixel_completion.png")
    return written


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/compare")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "compare_fashionmnist.json"
    result = build(out, read(path))
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    for written in [path, *figures(out)]:
        print(f"wrote {written}")


if __name__ == "__main__":
    main()
