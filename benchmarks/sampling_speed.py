"""Sampling speed: vqgpt's KV-cache sampler against the re-forward loop and Hugging Face `generate`.

    pip install -e ".[bench]"                                   # transformers, the peer
    python benchmarks/sampling_speed.py               # batch 1, 16, 64 -> benchmarks/results/sampling_speed.json
    python benchmarks/sampling_speed.py --batches 1 --runs 3 --out /tmp/s.json

One GPT size for all (default 8 layers x 512 wide, 8 heads, vocab 1024, 256 tokens = a 16x16 grid, unconditional,
fp32), plain sampling (temperature 1, no top-k/top-p). The cases:
    vqgpt      vqgpt.generate.sampling.generate: one prefill, then one cached token a step
    compiled   the same with compile=True (`sampling.compile`): the static-shape decode step through
               torch.compile (its compile time falls in the untimed warm-up run)
    cfg        vqgpt with classifier-free guidance (cfg_scale=2) on a class-conditional twin (10 classes, same
               weights): twice the sequences, so it should cost at most twice `vqgpt`
    reforward  generate_nocache: the whole sequence again for every token (the seeds' loop; the test oracle)
    hf         transformers' GPT2LMHeadModel.generate(use_cache=True, do_sample=True) with vqgpt's weights copied
               in; the start token goes in as `inputs_embeds`, so both models see the same numbers
    int8       (--int8, CPU) vqgpt with sampling.quantize=int8: every Linear as torch's dynamic int8 Linear
    hf_int8    (--int8) the same quantization of the HF twin (its Conv1D layers turned into Linear first)
Before timing, the logits of both models on the same tokens must agree (max |diff| printed) and greedy decoding
must give the same tokens. The cases take turns run by run, in one process, one thread by default; medians.
int8's quality on a trained GPT (token agreement, FID-2k): benchmarks/masked_fashionmnist.sh.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    RESULTS_DIR,
    hf_gpt2,
    interleaved,
    median,
    now,
    package_version,
    write_result,
)

from vqgpt.config import GPTConfig  # noqa: E402
from vqgpt.device import autocast, native_bf16  # noqa: E402
from vqgpt.generate.quantize import quantize_int8  # noqa: E402
from vqgpt.generate.sampling import generate, generate_nocache  # noqa: E402
from vqgpt.models.gpt import GPT  # noqa: E402


def hf_twin(model: GPT):
    """transformers' GPT-2 of the same size holding `model`'s weights (vocab = the image tokens only)."""
    cfg = model.config
    hf = hf_gpt2(cfg)
    ours = model.state_dict()
    new = {"transformer.wte.weight": ours["transformer.wte.weight"],
           "transformer.wpe.weight": ours["transformer.wpe.weight"],
           "transformer.ln_f.weight": ours["transformer.ln_f.weight"],
           "lm_head.weight": ours["lm_head.weight"]}
    for i in range(cfg.n_layer):
        src, dst = f"transformer.h.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            new[dst + ln + ".weight"] = ours[src + ln + ".weight"]
        for ours_name, hf_name in (("attn.c_attn", "attn.c_attn"), ("attn.c_proj", "attn.c_proj"),
                                   ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            new[dst + hf_name + ".weight"] = ours[src + ours_name + ".weight"].t()  # HF's Conv1D is (in, out)
    state = hf.state_dict()
    for name, value in state.items():  # ours has no biases (bias=False): HF's are zero
        if name not in new:
            new[name] = torch.zeros_like(value) if name.endswith(".bias") else value
    hf.load_state_dict(new, strict=True)
    return hf.eval()


def hf_int8(hf):
    """The HF twin with torch's dynamic int8 Linear layers, as `quantize_int8` makes ours: its Conv1D layers (a
    Linear with the weight stored transposed) become nn.Linear first, which quantize_dynamic knows."""
    from transformers.pytorch_utils import Conv1D

    hf = copy.deepcopy(hf)
    for parent in list(hf.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = torch.nn.Linear(*child.weight.shape, bias=child.bias is not None)
                linear.weight.data = child.weight.data.t().contiguous()
                if child.bias is not None:
                    linear.bias.data = child.bias.data.clone()
                setattr(parent, name, linear)
    return quantize_int8(hf)


def start_embeds(model: GPT, batch: int) -> torch.Tensor:
    """(B, 1, C): the unconditional start token's embedding, the first input of every sequence."""
    return model.transformer.wce.weight[model.null_class].expand(batch, 1, -1).contiguous()


@torch.no_grad()
def check_agreement(model: GPT, hf) -> dict:
    """Max |logit difference| of the two models on the same random tokens, and whether greedy tokens match."""
    cfg = model.config
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
    ours = model(tokens)[0]  # (2, T, V)
    embeds = torch.cat([start_embeds(model, 2), model.transformer.wte(tokens[:, :-1])], dim=1)
    theirs = hf(inputs_embeds=embeds).logits
    diff = (ours - theirs).abs().max().item()
    greedy_ours = generate(model, 2, top_k=1)
    greedy_hf = hf_generate(model, hf, 2, do_sample=False)
    return {"max_abs_logit_diff": diff, "greedy_tokens_equal": bool(torch.equal(greedy_ours, greedy_hf))}


@torch.no_grad()
def hf_generate(model: GPT, hf, batch: int, do_sample: bool = True) -> torch.Tensor:
    """(B, T) tokens from transformers' `generate` with its KV cache, started from our start embedding, in the
    precision vqgpt samples in (bf16 autocast on a GPU that has it, fp32 elsewhere)."""
    length = model.config.block_size
    device = model.transformer.wte.weight.device
    with autocast(device, "auto"):
        return hf.generate(inputs_embeds=start_embeds(model, batch),
                           attention_mask=torch.ones(batch, 1, dtype=torch.long, device=device),
                           do_sample=do_sample, top_k=None, top_p=None, temperature=None, use_cache=True,
                           max_new_tokens=length, min_new_tokens=length, pad_token_id=0)


def copy_bandwidth(device: torch.device, runs: int, megabytes: int = 256) -> float:
    """Bytes per second that one device copy moves (each byte read once and written once): the memory bandwidth
    a decode step can at best use."""
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    seconds = median(interleaved({"copy": lambda: dst.copy_(src)}, max(runs, 3), device)["copy"])
    return 2 * src.numel() * src.element_size() / seconds


def decode_bound(model: GPT, batch: int, bandwidth: float, bytes_per_number: int) -> float:
    """Tokens/s if every decode step only read the weights once (the tied embedding counted once, as the output
    layer reads it whole) and each sequence's keys and values so far (half the block on average), at `bandwidth`:
    the ceiling of batch-1 decoding, which is bound by memory traffic, not arithmetic."""
    c = model.config
    weights = sum(p.numel() for p in model.parameters())
    kv_cache = batch * (c.block_size / 2) * c.n_layer * 2 * c.n_embd
    return batch * bandwidth / ((weights + kv_cache) * bytes_per_number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--reforward-batches", type=int, nargs="*", default=[1],
                        help="batches that also time the re-forward loop (default 1: at 64 it takes minutes a run)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled case")
    parser.add_argument("--int8", action="store_true", help="also time int8 sampling, ours and HF's (CPU)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (medians reported)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per image (block size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sampling_speed.json")
    args = parser.parse_args()
    if package_version("transformers") is None:
        sys.exit('error: the Hugging Face peer needs transformers: pip install -e ".[bench]"')

    started = now()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.tokens, num_classes=0, n_layer=args.layers,
                          n_head=args.heads, n_embd=args.width)).eval()
    hf = hf_twin(model)
    agreement = check_agreement(model, hf)
    print(f"agreement with transformers: {agreement}")
    if agreement["max_abs_logit_diff"] > 1e-3:
        sys.exit("error: the two models' logits differ; the weight copy is wrong, nothing was timed")
    model, hf = model.to(device), hf.to(device)
    conditional = GPT(dataclasses.replace(model.config, num_classes=10)).to(device).eval()
    conditional.load_state_dict({**model.state_dict(), "transformer.wce.weight": conditional.transformer.wce.weight})

    if args.int8:
        model_int8, hf_q = quantize_int8(model), hf_int8(hf)
        with torch.no_grad():
            tokens = torch.randint(0, args.vocab, (2, args.tokens), generator=torch.Generator().manual_seed(0))
            embeds = torch.cat([start_embeds(model, 2), model.transformer.wte(tokens[:, :-1])], dim=1)
            ours, theirs, full = model_int8(tokens)[0], hf_q(inputs_embeds=embeds).logits, model(tokens)[0]
        agreement["int8_max_abs_logit_diff"] = (ours - theirs).abs().max().item()  # the same quantization
        agreement["int8_argmax_agreement_with_fp32"] = (ours.argmax(-1) == full.argmax(-1)).float().mean().item()
        print(f"int8: {agreement}")
    bandwidth = copy_bandwidth(device, args.runs)
    # sampling runs in bf16 on a GPU that has it natively (vqgpt.device.autocast), fp32 elsewhere
    bytes_per_number = 2 if device.type == "cuda" and native_bf16() else 4
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for batch in args.batches:
        cases = {"vqgpt": lambda b=batch: generate(model, b, seed=0),
                 "hf": lambda b=batch: hf_generate(model, hf, b)}
        if args.compile:
            cases["compiled"] = lambda b=batch: generate(model, b, seed=0, compile=True)
        cases["cfg"] = lambda b=batch: generate(conditional, b, cond=0, cfg_scale=2.0, seed=0)
        if args.int8:
            cases["int8"] = lambda b=batch: generate(model_int8, b, seed=0)
            cases["hf_int8"] = lambda b=batch: hf_generate(model, hf_q, b)
        if batch in args.reforward_batches:
            cases["reforward"] = lambda b=batch: generate_nocache(model, b, seed=0)
        times = interleaved(cases, args.runs, device)
        med = {name: median(values) for name, values in times.items()}
        row = {"batch": batch, "seconds": times, "median_seconds": med,
               "tokens_per_second": {n: batch * args.tokens / s for n, s in med.items()},
               "images_per_second": {n: batch / s for n, s in med.items()},
               "vqgpt_speedup_vs": {n: s / med["vqgpt"] for n, s in med.items() if n != "vqgpt"},
               "bandwidth_bound_tokens_per_second": decode_bound(model, batch, bandwidth, bytes_per_number)}
        rows.append(row)
        print(f"batch {batch}: " + ", ".join(f"{n} {row['tokens_per_second'][n]:.0f} tok/s" for n in med)
              + "; vqgpt is " + ", ".join(f"{r:.2f}x {n}" for n, r in row["vqgpt_speedup_vs"].items()))

    lines = ["| batch | vqgpt tok/s | compiled tok/s | HF tok/s | re-forward tok/s | vqgpt vs HF | compiled vs HF "
             "| vqgpt vs re-forward | cfg time | bandwidth bound tok/s | vqgpt of bound |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        tps = row["tokens_per_second"]
        rate = {name: f"{tps[name]:.0f}" if name in tps else "-" for name in ("compiled", "reforward")}
        ratio = {name: f"{tps[name] / tps[base]:.2f}x" if name in tps and base in tps else "-"
                 for name, base in (("vqgpt", "hf"), ("compiled", "hf"))}
        vs_reforward = f"{tps['vqgpt'] / tps['reforward']:.1f}x" if "reforward" in tps else "-"
        cfg_cost = row["median_seconds"]["cfg"] / row["median_seconds"]["vqgpt"]
        lines.append(f"| {row['batch']} | {tps['vqgpt']:.0f} | {rate['compiled']} | {tps['hf']:.0f} | "
                     f"{rate['reforward']} | {ratio['vqgpt']} | {ratio['compiled']} | {vs_reforward} | "
                     f"{cfg_cost:.2f}x | {row['bandwidth_bound_tokens_per_second']:.0f} | "
                     f"{tps['vqgpt'] / row['bandwidth_bound_tokens_per_second']:.0%} |")
    if args.int8:
        lines += ["", "| batch | int8 tok/s | HF int8 tok/s | int8 vs HF fp32 | int8 vs HF int8 | int8 vs vqgpt fp32 |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            tps = row["tokens_per_second"]
            lines.append(f"| {row['batch']} | {tps['int8']:.0f} | {tps['hf_int8']:.0f} | "
                         f"{tps['int8'] / tps['hf']:.2f}x | {tps['int8'] / tps['hf_int8']:.2f}x | "
                         f"{tps['int8'] / tps['vqgpt']:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    write_result(args.out, started, {
        "benchmark": "sampling_speed",
        "model": {"n_layer": args.layers, "n_embd": args.width, "n_head": args.heads, "vocab_size": args.vocab,
                  "block_size": args.tokens, "params": sum(p.numel() for p in model.parameters())},
        "device": str(device), "threads": args.threads, "runs": args.runs,
        "dtype": "bfloat16" if bytes_per_number == 2 else "float32", "copy_bandwidth_bytes_per_second": bandwidth,
        "sampling": "temperature 1, no top-k/top-p, unconditional",
        "agreement": agreement, "results": rows, "table_markdown": table,
    }, packages=("transformers",))


if __name__ == "__main__":
    main()
