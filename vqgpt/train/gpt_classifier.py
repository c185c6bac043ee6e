"""Classification from a trained GPT, as Image GPT measures its features (Chen et al. 2020): a linear probe on
a block's average-pooled outputs (the GPT frozen), or fine-tuning the whole GPT with a linear head.

    results = classify(run, out_dir, config)     # run: ClassifyRun; mode=probe or mode=finetune

Both read the labelled token cache of the GPT's tokenizer (built once, as train_gpt.py does) and feed every
sequence the null class token, so a class-conditional GPT is never told the answer. iGPT found the best
probe features in the middle of the network, so the probe tries every block and picks one on held-out train
images. Writes eval.json (test accuracy), and for finetune the engine's checkpoint and metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from vqgpt.checkpoint import load_checkpoint
from vqgpt.config import ClassifyRun, GPTClassifierConfig
from vqgpt.data.datasets import stratified_split
from vqgpt.data.token_cache import TokenDataset, prepare_token_cache, read_header
from vqgpt.device import pick_device, set_threads
from vqgpt.errors import UserError
from vqgpt.models.gpt_classifier import GPTClassifier
from vqgpt.models.transformer import Transformer
from vqgpt.progress import progress
from vqgpt.train.engine import Engine

MODES = ("probe", "finetune")


def random_subset(dataset: Dataset, num: int | None, seed: int) -> Dataset:
    """`num` random items of `dataset` (all of it when None or larger): a sorted split stays class-balanced."""
    if num is None or num >= len(dataset):
        return dataset
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num]
    return Subset(dataset, picks.tolist())


@torch.no_grad()
def pooled_features(gpt: Transformer, dataset: Dataset, layers: list[int], batch_size: int,
                    device: torch.device) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """{layer: (N, C) block outputs averaged over positions}, and the (N,) labels, from one pass per batch."""
    features: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    labels = []
    for tokens, y in progress(DataLoader(dataset, batch_size=batch_size), desc="features"):
        x = gpt.feature_input(tokens.to(device))  # the null class token starts every sequence
        for layer, hidden in zip(layers, gpt.hidden_states(x, layers=layers), strict=True):
            features[layer].append(hidden.float().mean(dim=1).cpu())
        labels.append(y)
    return {layer: torch.cat(f) for layer, f in features.items()}, torch.cat(labels)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
               max_iter: int) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features, full batch by L-BFGS."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    z = (x - mean) / std
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z), y) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # fold the standardisation in: the probe takes raw features
        linear.weight.div_(std)
        linear.bias.sub_(linear.weight @ mean)
    return linear


def accuracy(linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (linear(x).argmax(dim=1) == y).float().mean().item()


def linear_probe(run: ClassifyRun, gpt: Transformer, cache: Path, num_classes: int,
                 device: torch.device) -> dict[str, Any]:
    """Probe every asked block: fit on the train images minus a held-out part, pick the block by held-out
    accuracy, refit it on all the train images and report its test accuracy (and every block's)."""
    p, n_layer = run.probe, gpt.config.n_layer
    layers = list(range(n_layer + 1)) if p.layers is None else sorted(set(p.layers))
    if not layers or min(layers) < 0 or max(layers) > n_layer:
        raise UserError(f"probe.layers={p.layers}: this GPT has blocks 0 (the embeddings) to {n_layer}")
    if not 0 < p.val_fraction < 1:
        raise UserError(f"probe.val_fraction={p.val_fraction} must be in (0, 1)")
    start = time.perf_counter()
    train_set = TokenDataset(cache, "train")
    if read_header(cache).get("hflip_copies"):  # the flipped copies are augmentation, not more labelled images
        train_set = Subset(train_set, range(len(train_set) // 2))
    train_set = random_subset(train_set, p.train_images, run.trainer.seed)
    test_set = random_subset(TokenDataset(cache, "test"), p.test_images, run.trainer.seed + 1)
    train_x, train_y = pooled_features(gpt, train_set, layers, run.batch_size, device)
    test_x, test_y = pooled_features(gpt, test_set, layers, run.batch_size, device)
    held, fit = stratified_split(train_y, p.val_fraction, run.trainer.seed)
    per_layer = {}
    for layer in layers:
        x, y = train_x[layer], train_y
        val = accuracy(fit_linear(x[fit], y[fit], num_classes, p.weight_decay, p.max_iter), x[held], y[held])
        full = fit_linear(x, y, num_classes, p.weight_decay, p.max_iter)
        per_layer[layer] = {"val_accuracy": val, "test_accuracy": accuracy(full, test_x[layer], test_y)}
        print(f"layer {layer}: held-out {val:.4f}, test {per_layer[layer]['test_accuracy']:.4f}")
    best = max(layers, key=lambda layer: per_layer[layer]["val_accuracy"])
    return {"mode": "probe", "layer": best, "test_accuracy": per_layer[best]["test_accuracy"],
            "layers": {str(k): v for k, v in per_layer.items()}, "train_images": len(train_y),
            "test_images": len(test_y), "seconds": time.perf_counter() - start}


class FinetuneTask:
    """The GPT and a zero-initialised linear head, trained on cross-entropy + gen_weight x the GPT's own loss."""

    stage, arch = "gpt_classifier", "gpt_classifier"
    eval_split = "test"  # classify.py's accuracy is the test split's, as the probe's

    def __init__(self, run: ClassifyRun, engine: Engine, gpt: Any, cache: Path, num_classes: int):
        self.train_set, self.test_set = TokenDataset(cache, "train"), TokenDataset(cache, "test")
        engine.check_data(self.train_set)
        config = GPTClassifierConfig(gpt=gpt.model.config, gpt_arch=gpt.meta["arch"], num_classes=num_classes)
        self.model = GPTClassifier(config)
        self.model.gpt.load_state_dict(gpt.model.state_dict())
        self.model.to(engine.device)
        self.net = engine.prepare(self.model)
        self.modules = {"model": self.model}
        self.optimizers = {"model": engine.adamw(self.model)}
        self.gen_weight, self.batch_size, self.device = run.gen_weight, run.trainer.batch_size, engine.device
        self.meta = {k: gpt.meta[k] for k in ("dataset", "image_size", "channels", "num_classes", "class_names",
                                              "tokenizer_hash")}
        self.meta["checkpoint_gpt"] = str(gpt.path)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"{self.meta['dataset']}: fine-tuning a {n_params / 1e6:.2f}M-parameter GPT + linear head on "
                f"{len(self.train_set)} train token grids (loss = CE + {self.gen_weight} x the GPT's own)")

    def train_step(self, e: Engine, step: int) -> dict[str, Any]:
        total, gen_total = torch.zeros((), device=e.device), torch.zeros((), device=e.device)
        for tokens, labels in e.micro_batches(self.net):
            with e.autocast:
                logits, gen = self.net(tokens)
                loss = F.cross_entropy(logits.float(), labels) + self.gen_weight * gen
            e.backward(loss / e.t.grad_accum)
            total += loss.detach() / e.t.grad_accum
            gen_total += gen.detach() / e.t.grad_accum
        e.optimizer_step("model")
        return {"train/loss": total, "train/gen_loss": gen_total}

    @torch.no_grad()
    def evaluate(self, model: GPTClassifier) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        correct, count = 0, 0
        for tokens, labels in DataLoader(self.test_set, batch_size=self.batch_size):
            logits, _ = model(tokens.to(self.device))
            correct += (logits.argmax(dim=1).cpu() == labels).sum().item()
            count += len(labels)
        model.train(was_training)
        return {"mode": "finetune", "test_accuracy": correct / count, "test_images": count}

    def snapshot(self, model: GPTClassifier, step: int) -> None:
        return None

    def summary(self, results: dict[str, Any]) -> str:
        return f"test accuracy {results['test_accuracy']:.4f} ({results['test_images']} images)"


def classify(run: ClassifyRun, out_dir: Path, config: dict) -> dict[str, Any]:
    """The linear probe or fine-tuning of `run.checkpoint_gpt` on its tokenizer's labelled data; eval.json."""
    if run.mode not in MODES:
        raise UserError(f"mode={run.mode!r} is not one of {', '.join(MODES)}")
    if run.gen_weight < 0:
        raise UserError(f"gen_weight={run.gen_weight} must be >= 0 (0 = cross-entropy alone)")
    if not run.checkpoint_gpt:
        raise UserError("checkpoint_gpt is not set; pass checkpoint_gpt=<the GPT checkpoint directory>")
    gpt = load_checkpoint(run.checkpoint_gpt, expected_stage="gpt", ema=run.ema)
    vae_path = run.checkpoint_vae or gpt.meta.get("tokenizer_path")
    if not vae_path:
        raise UserError(f"{run.checkpoint_gpt} records no tokenizer path; pass checkpoint_vae=<its tokenizer>")
    num_classes = gpt.meta["num_classes"] or 0
    if num_classes < 2:
        raise UserError(f"{run.checkpoint_gpt} was trained on {gpt.meta['dataset']}, which has {num_classes} "
                        "class(es); classifying needs a labelled dataset of 2 or more")
    if run.mode == "finetune":
        engine = Engine(run.trainer, out_dir, config, run.logger, resume=run.resume)
        device = engine.device
    else:
        set_threads(run.trainer.num_threads)
        device = pick_device(run.trainer.device)
    hflip = bool(gpt.meta.get("hflip_copies"))  # the GPT's own token cache
    cache, header = prepare_token_cache(vae_path, None, run.cache_dir, hflip, device=device)
    if gpt.meta.get("tokenizer_hash") not in (None, header["tokenizer_hash"]):
        raise UserError(f"{run.checkpoint_gpt} was trained on the tokens of another tokenizer than {vae_path}; pass "
                        "the checkpoint_vae it was trained with")
    if run.mode == "finetune":
        return engine.fit(FinetuneTask(run, engine, gpt, cache, num_classes))
    results = linear_probe(run, gpt.model.to(device), cache, num_classes, device)
    results["checkpoint_gpt"] = str(run.checkpoint_gpt)
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"linear probe: layer {results['layer']} (best held-out), test accuracy {results['test_accuracy']:.4f} "
          f"on {results['test_images']} images")
    return results
