"""Masked against raster sampling speed on trained checkpoints, and int8's token agreement with fp32.

    python benchmarks/masked_speed.py --vae T --raster G --masked M --out speed.json   # masked_fashionmnist.sh

Images/s at batch 1 and 64 (one thread by default; the cases take turns run by run; medians) of: the raster GPT
in fp32 and in int8 (sampling.quantize=int8), and the masked GPT at 4, 8, 12 and 16 decoding steps; the token
grid's sampling and the tokenizer's decoding are timed apart (their sum makes images/s). int8's agreement with
fp32: the next-token argmax, teacher-forced on the val split's token grids, and whole greedy sequences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved, median, now, write_result  # noqa: E402

from vqgpt.config import SampleRun  # noqa: E402
from vqgpt.data.token_cache import TokenDataset, eval_split, prepare_token_cache  # noqa: E402
from vqgpt.generate.masked import generate_masked  # noqa: E402
from vqgpt.generate.pipeline import decode, load_models  # noqa: E402
from vqgpt.generate.quantize import quantize_int8  # noqa: E402
from vqgpt.generate.sampling import generate  # noqa: E402

STEPS = (4, 8, 12, 16)


@torch.no_grad()
def int8_agreement(gpt: torch.nn.Module, fast: torch.nn.Module, vae: str, images: int) -> dict:
    """Teacher-forced next-token argmax agreement on `images` val grids, and greedy sequences equal in full."""
    cache, header = prepare_token_cache(vae, None, None, False, torch.device("cpu"))
    data = TokenDataset(cache, eval_split(header))  # val when the tokenizer's data held images out
    tokens = torch.stack([data[i][0] for i in range(min(images, len(data)))])
    labels = torch.tensor([data[i][1] for i in range(len(tokens))])
    agree = (gpt(tokens, labels)[0].argmax(-1) == fast(tokens, labels)[0].argmax(-1)).float().mean().item()
    cond = torch.arange(64) % gpt.config.num_classes
    greedy = generate(gpt, 64, cond=cond, top_k=1, seed=0), generate(fast, 64, cond=cond, top_k=1, seed=0)
    return {"teacher_forced_argmax_agreement": agree, "greedy_tokens_agreement": (greedy[0] == greedy[1]).float()
            .mean().item(), "greedy_sequences_equal": (greedy[0] == greedy[1]).all(dim=1).float().mean().item(),
            "images": len(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", required=True)
    parser.add_argument("--raster", required=True)
    parser.add_argument("--masked", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = now()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    raster = load_models(SampleRun(checkpoint_vae=args.vae, checkpoint_gpt=args.raster), cpu)
    masked = load_models(SampleRun(checkpoint_vae=args.vae, checkpoint_gpt=args.masked), cpu)
    fast = quantize_int8(raster.gpt)
    classes = raster.gpt.config.num_classes
    rows = []
    for batch in args.batches:
        cond = torch.arange(batch) % classes
        cases = {"raster": lambda c=cond: generate(raster.gpt, len(c), cond=c, seed=0),
                 "raster_int8": lambda c=cond: generate(fast, len(c), cond=c, seed=0)}
        for steps in STEPS:
            cases[f"masked_{steps}"] = lambda c=cond, s=steps: generate_masked(masked.gpt, len(c), cond=c, steps=s,
                                                                               seed=0)
        grid = generate(raster.gpt, batch, cond=cond, seed=0)
        cases["decode"] = lambda g=grid: decode(raster.tokenizer, g)
        times = interleaved(cases, args.runs, cpu)
        med = {name: median(values) for name, values in times.items()}
        images_per_second = {name: batch / (s + med["decode"]) for name, s in med.items() if name != "decode"}
        rows.append({"batch": batch, "seconds": times, "median_seconds": med, "images_per_second": images_per_second,
                     "speedup_vs_raster": {n: v / images_per_second["raster"] for n, v in images_per_second.items()}})
        print(f"batch {batch}: " + ", ".join(f"{n} {v:.1f} img/s" for n, v in images_per_second.items()))
    agreement = int8_agreement(raster.gpt, fast, args.vae, 2000)
    print(f"int8 agreement with fp32: {agreement}")
    write_result(args.out, started, {"benchmark": "masked_speed", "threads": args.threads, "runs": args.runs,
                                     "vae": args.vae, "raster": args.raster, "masked": args.masked,
                                     "results": rows, "int8_agreement": agreement})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
