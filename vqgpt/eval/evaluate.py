"""What `scripts/evaluate.py` measures: a tokenizer's reconstructions, or a GPT's samples, on the test split.

    results = evaluate_tokenizer(run, device)   # rFID, PSNR, SSIM, LPIPS, codebook usage and perplexity
    results = evaluate_gpt(run, device)         # FID-N (per cfg scale), IS, class accuracy, nats/token, bits/dim
    print(table(results))

Samples are generated, decoded and measured one batch at a time, so memory stays flat in the number of
samples. GPT training's optional FID-N (train_gpt.py fid_samples=N) goes through `sample_fid` too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torchmetrics.classification import MulticlassAccuracy

from vqgpt.checkpoint import load_checkpoint, read_meta
from vqgpt.config import (
    DatasetConfig,
    EvaluateRun,
    FIDConfig,
    SampleRun,
    SamplingConfig,
    SamplingOptions,
    dataclass_from_dict,
)
from vqgpt.data import SPLITS, build_dataset
from vqgpt.data.token_cache import TokenDataset, prepare_token_cache
from vqgpt.errors import UserError
from vqgpt.eval.fid import FID
from vqgpt.eval.likelihood import loss_metrics, loss_unit, test_loss
from vqgpt.eval.lpips import build_lpips
from vqgpt.eval.reconstruction import reconstruction_metrics
from vqgpt.generate.pipeline import (
    Models,
    check_classifier,
    check_sample_run,
    head_of,
    image_batches,
    load_models,
    sample_images,
)
from vqgpt.generate.sampling import resolve_class
from vqgpt.progress import progress
from vqgpt.tokenizers.vqgan.losses import LPIPS_MIN_SIZE

STAGES = ("tokenizer", "gpt")


def check_run(run: EvaluateRun) -> None:
    """Every option, checked before any model is built (one-line UserErrors)."""
    if run.stage not in STAGES:
        raise UserError(f"stage={run.stage} is not one of {', '.join(STAGES)}")
    if not run.checkpoint_vae:
        raise UserError("checkpoint_vae is not set; pass checkpoint_vae=<tokenizer checkpoint directory>")
    if run.stage == "gpt" and not run.checkpoint_gpt:
        raise UserError("stage=gpt needs checkpoint_gpt=<GPT checkpoint directory> (or stage=tokenizer)")
    f = run.fid
    for key, value in (("fid.batch_size", f.batch_size), ("batch_size", run.batch_size)):
        if value < 1:
            raise UserError(f"{key}={value} must be a positive integer")
    if f.num_samples < 2:
        raise UserError(f"fid.num_samples={f.num_samples}: FID needs at least 2 images")
    if f.reference_size is not None and f.reference_size < 4:
        raise UserError(f"fid.reference_size={f.reference_size} must be at least 4 (two halves of 2), or null")
    if f.reference_split not in SPLITS:
        raise UserError(f"fid.reference_split={f.reference_split} must be one of {', '.join(SPLITS)}")


def data_config(tokenizer_path: str, meta: dict) -> DatasetConfig:
    """The tokenizer's data config, as saved in its checkpoint."""
    if not meta.get("data_config"):
        raise UserError(f"{tokenizer_path} records no data_config, so there is no test split to measure against")
    return dataclass_from_dict(DatasetConfig, meta["data_config"])


def build_fid(f: FIDConfig, data_cfg: DatasetConfig, device: torch.device) -> FID:
    """The FID metric with the reference statistics of `f.reference_split` (computed now, or read from the cache)."""
    def build(inception_score: bool) -> FID:
        return FID(data_cfg, device, split=f.reference_split, reference_size=f.reference_size,
                   inception_score=inception_score, weights=f.inception_weights,
                   logits_weights=f.inception_logits_weights, batch_size=f.batch_size)

    if f.inception_score is not None:
        return build(f.inception_score)
    if data_cfg.channels != 3:  # IS scores ImageNet classes: meaningless for grayscale data
        return build(False)
    try:
        return build(True)
    except UserError as e:  # IS was not asked for by name: the FID still stands
        print(f"Inception Score skipped ({e}); fid.inception_score=false silences this")
        return build(False)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: reconstructions


def evaluate_tokenizer(run: EvaluateRun, device: torch.device) -> dict[str, Any]:
    """rFID of the reference split's reconstructions, with PSNR, SSIM, LPIPS and codebook statistics."""
    tok = load_checkpoint(run.checkpoint_vae, expected_stage="tokenizer", map_location=device)
    data_cfg = data_config(run.checkpoint_vae, tok.meta)
    fid = build_fid(dataclasses.replace(run.fid, inception_score=False), data_cfg, device)
    dataset = build_dataset(data_cfg, run.fid.reference_split, train=False)
    dataset = Subset(dataset, range(fid.reference_size))  # the images the reference statistics are of
    lpips_net = None
    if data_cfg.image_size >= LPIPS_MIN_SIZE:
        lpips_net = build_lpips().to(device)
    else:
        print(f"LPIPS skipped: the images are smaller than {LPIPS_MIN_SIZE} px")
    start = time.perf_counter()
    results = reconstruction_metrics(tok.model, dataset, lpips_net, device, run.batch_size, fid=fid)
    rfid = fid.compute(class_balance=f"the {run.fid.reference_split} split's own (reconstructions of it)")
    return {"stage": "tokenizer", "checkpoint_vae": run.checkpoint_vae, "rfid": rfid.pop("fid"), **results,
            **rfid, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------------
# GPT: samples


def balanced_labels(num: int, num_classes: int, label: int | None = None) -> torch.Tensor | None:
    """Class labels for `num` samples: every class in turn (counts differ by at most one), one class, or None."""
    if not num_classes:
        return None
    if label is not None:
        return torch.full((num,), label, dtype=torch.long)
    return torch.arange(num) % num_classes


def describe_balance(labels: torch.Tensor | None, class_names: list[str] | None) -> str:
    """'balanced: 1000 per class (10 classes)' / 'unconditional' / 'one class: Sneaker'."""
    if labels is None:
        return "unconditional"
    counts = torch.bincount(labels)
    used = counts.nonzero().flatten()
    if len(used) == 1:
        name = class_names[used.item()] if class_names else str(used.item())
        return f"one class: {name}"
    low, high = int(counts[used].min()), int(counts[used].max())
    per = f"{low}" if low == high else f"{low}-{high}"
    return f"balanced: {per} per class ({len(used)} classes)"


@torch.no_grad()
def sample_fid(models: Models, fid: FID, labels: torch.Tensor | None, num: int, s: SamplingOptions,
               batch_size: int, classifier: torch.nn.Module | None = None, desc: str = "sampling") -> dict[str, Any]:
    """FID (and IS, class accuracy) of `num` samples drawn `batch_size` at a time (pipeline.image_batches)."""
    fid.reset()
    accuracy = None
    if classifier is not None and labels is not None:
        n_cls = classifier.config.num_classes
        accuracy = MulticlassAccuracy(num_classes=n_cls, average="none").to(fid.device)
        mean_accuracy = MulticlassAccuracy(num_classes=n_cls, average="micro").to(fid.device)
    start = time.perf_counter()
    bar = progress(total=num, desc=desc)
    for index, settings in image_batches(num, s, batch_size):
        n = len(index)
        cond = None if labels is None else labels[index.start:index.stop].to(fid.device)
        images = sample_images(models, cond, n, settings, batch_size)
        fid.update(images)
        if accuracy is not None:
            predicted = classifier(images.to(fid.device)).argmax(-1)
            accuracy.update(predicted, cond)
            mean_accuracy.update(predicted, cond)
        bar.update(n)
    bar.close()
    out = fid.compute(class_balance=describe_balance(labels, models.class_names))
    if accuracy is not None:
        per_class = accuracy.compute()
        out["class_accuracy"] = float(mean_accuracy.compute())
        out["per_class_accuracy"] = [None if math.isnan(a) else float(a) for a in per_class.tolist()]
    out["seconds"] = time.perf_counter() - start
    return out


def token_metrics(run: EvaluateRun, models: Models, device: torch.device) -> dict[str, Any]:
    """Test-split nats/token, bits/token and bits/dim (of the token stream per sub-pixel) from the token cache; a
    loss without bits comes with its unit."""
    hflip = bool(read_meta(run.checkpoint_gpt).get("hflip_copies"))  # the GPT's own cache (its test split either way)
    cache, _ = prepare_token_cache(run.checkpoint_vae, None, run.cache_dir, hflip, device=device)
    loader = DataLoader(TokenDataset(cache, "test"), batch_size=run.batch_size)
    loss = test_loss(models.gpt, loader, device, models.gpt.config.num_classes > 0)
    t = models.tokenizer
    results: dict[str, Any] = loss_metrics(models.gpt, loss, t.channels * t.image_size * t.image_size)
    if (unit := loss_unit(models.gpt)) is not None:  # no bits: say what the loss is
        results["loss_unit"] = unit
    return results


def evaluate_gpt(run: EvaluateRun, device: torch.device) -> dict[str, Any]:
    """Test nats/token, then FID-N of class-balanced samples for each cfg scale (IS and class accuracy with it)."""
    sampling = SamplingConfig(**dataclasses.asdict(run.sampling), num_samples=run.fid.num_samples)
    sample_run = SampleRun(checkpoint_vae=run.checkpoint_vae, checkpoint_gpt=run.checkpoint_gpt,
                           checkpoint_classifier=run.checkpoint_classifier, sampling=sampling, ema=run.ema,
                           batch_size=run.batch_size)
    scales = list(run.cfg_scales) if run.cfg_scales else [run.sampling.cfg_scale]
    with_scale = [dataclasses.replace(sample_run, sampling=dataclasses.replace(sampling, cfg_scale=scale))
                  for scale in scales]
    models = load_models(with_scale[0], device)
    for checked in with_scale[1:]:  # every scale passes the sampling checks before anything runs
        check_sample_run(checked, models.gpt.config.vocab_size, models.gpt.config.num_classes, not models.gpt.causal,
                         head_of(models.gpt))
    classifier = models.classifier  # loaded for rejection (sampling.accept_n > 1), or just for the accuracy:
    if run.checkpoint_classifier and classifier is None:
        classifier = load_checkpoint(run.checkpoint_classifier, expected_stage="classifier", map_location=device)
        check_classifier(classifier.model, models.tokenizer, models.gpt, run.checkpoint_classifier)
        classifier = classifier.model.eval()
    data_cfg = data_config(run.checkpoint_vae, {"data_config": models.data_config})
    results: dict[str, Any] = {"stage": "gpt", "checkpoint_vae": run.checkpoint_vae,
                               "checkpoint_gpt": run.checkpoint_gpt, **token_metrics(run, models, device)}
    label = resolve_class(run.sampling.class_label, models.class_names, models.gpt.config.num_classes)
    labels = balanced_labels(run.fid.num_samples, models.gpt.config.num_classes, label)
    fid = build_fid(run.fid, data_cfg, device)
    results["samples"] = []
    for scale in scales:
        s = dataclasses.replace(run.sampling, cfg_scale=scale)
        row = sample_fid(models, fid, labels, run.fid.num_samples, s, run.batch_size, classifier,
                         desc=f"sampling (cfg_scale={scale})")
        results["samples"].append({"cfg_scale": scale, **row})
    return results


# ---------------------------------------------------------------------------------------------------------
# The printed table


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results: dict[str, Any]) -> str:
    """A plain-text table of `results`, with the FID protocol under it."""
    lines = []
    if results["stage"] == "tokenizer":
        keys = ("rfid", "psnr", "ssim", "lpips", "usage", "perplexity")
        lines.append(" | ".join(f"{k:>10}" for k in (*keys, "images")))
        lines.append(" | ".join(f"{_fmt(results.get(k), 4 if k in ('ssim', 'lpips', 'usage') else 2):>10}"
                                for k in keys) + f" | {results['num_images']:>10}")
        protocol = results["protocol"]
        lines.append(f"FID noise floor (two halves of {results['fid_noise_floor_size']} real images each): "
                     f"{results['fid_noise_floor']:.2f}")
    else:
        if "bits_per_dim" in results:
            lines.append(f"test: {results['loss']:.4f} nats/token, {results['bits_per_token']:.4f} bits/token, "
                         f"{results['bits_per_dim']:.4f} bits/dim")
        else:  # a patch GPT's or a masked model's loss
            lines.append(f"test: loss {results['loss']:.4f} ({results['loss_unit']})")
        header = ("cfg_scale", "FID", "IS", "class acc", "seconds")
        lines.append(" | ".join(f"{h:>10}" for h in header))
        for row in results["samples"]:
            values = (row["cfg_scale"], row["fid"], row.get("inception_score"), row.get("class_accuracy"),
                      row["seconds"])
            lines.append(" | ".join(f"{_fmt(v, 3 if h == 'class acc' else 1 if h == 'seconds' else 2):>10}"
                                    for h, v in zip(header, values, strict=True)))
        first = results["samples"][0]
        protocol = first["protocol"]
        lines.append(f"FID noise floor (two halves of {first['fid_noise_floor_size']} real images each): "
                     f"{first['fid_noise_floor']:.2f}")
    lines.append("FID protocol: " + "; ".join(f"{k}: {v}" for k, v in protocol.items()))
    return "\n".join(lines)
