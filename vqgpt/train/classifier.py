"""The classifier behind sample.py's classifier rejection (`sampling.accept_n`): cross-entropy on the train
split, then test accuracy.

    results = train_classifier(run, out_dir, config)     # run: TrainClassifierRun
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vqgpt.checkpoint import save_checkpoint
from vqgpt.config import TrainClassifierRun
from vqgpt.data import build_dataset, dataset_info
from vqgpt.models.classifier import Classifier
from vqgpt.train.loggers import build_logger, progress
from vqgpt.train.optim import adamw, lr_at, set_lr
from vqgpt.train.runtime import (
    autocast,
    check_batch_fits,
    check_checkpoint_target,
    check_trainer,
    pick_device,
    seed_everything,
    set_threads,
)


@torch.no_grad()
def evaluate(model: Classifier, dataset: Dataset, device: torch.device, batch_size: int,
             num_workers: int = 0) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the whole split, in eval mode."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += len(labels)
    model.train()
    return {"accuracy": correct / count, "loss": loss / count, "num_images": count}


def train_classifier(run: TrainClassifierRun, out_dir: Path, config: dict) -> dict:
    """trainer.max_steps of cross-entropy on the train split, then test accuracy; saves checkpoints/last."""
    t = run.trainer
    check_trainer(t)
    set_threads(t.num_threads)
    device = pick_device(t.device)
    ckpt_dir = out_dir / "checkpoints" / "last"
    check_checkpoint_target(ckpt_dir)
    seed_everything(t.seed)
    train_set, test_set = build_dataset(run.dataset, "train"), build_dataset(run.dataset, "test")
    check_batch_fits(t, len(train_set))
    meta = dataset_info(run.dataset, train_set)
    num_classes = run.classifier.num_classes or meta["num_classes"]  # null: from the data (folder sub-folders)
    model = Classifier(dataclasses.replace(run.classifier, num_classes=num_classes)).to(device)
    optimizer = adamw(model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)

    logger = build_logger(run.logger, out_dir, config)
    mixed = autocast(device, t.precision)
    loader = DataLoader(train_set, batch_size=t.batch_size, shuffle=True, drop_last=True,
                        num_workers=t.num_workers, generator=torch.Generator().manual_seed(t.seed))
    batches = (batch for _ in iter(int, 1) for batch in loader)  # shuffled, forever
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{meta['dataset']}: {len(train_set)} train / {len(test_set)} test images, {meta['num_classes']} classes; "
          f"classifier {n_params / 1e6:.2f}M params; on {device}")

    model.train()
    bar = progress(total=t.max_steps, desc="classifier", enabled=t.progress_bar)
    for step in range(t.max_steps):
        lr = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        for _ in range(t.grad_accum):
            images, labels = next(batches)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with mixed:
                loss = F.cross_entropy(model(images).float(), labels)
            (loss / t.grad_accum).backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()

        bar.update(1)
        done = step + 1
        if step % t.log_every == 0 or done == t.max_steps:
            logger.log({"train/loss": loss, "train/lr": lr}, step=done)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if done % t.eval_every == 0 and done != t.max_steps:  # the final evaluation follows the loop
            val = evaluate(model, test_set, device, t.batch_size, t.num_workers)
            logger.log({"val/accuracy": val["accuracy"], "val/loss": val["loss"]}, step=done)
            bar.write(f"step {done}: test accuracy {val['accuracy']:.4f}")
        if done % t.checkpoint_every == 0 or done == t.max_steps:
            save_checkpoint(ckpt_dir, model, stage="classifier", arch="classifier", meta=meta, step=done)
    bar.close()
    if t.max_steps == 0:
        save_checkpoint(ckpt_dir, model, stage="classifier", arch="classifier", meta=meta, step=0)

    results = evaluate(model, test_set, device, t.batch_size, t.num_workers)
    logger.log({"val/accuracy": results["accuracy"], "val/loss": results["loss"]}, step=t.max_steps)
    logger.finish()
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2))
    print(f"test split: accuracy {results['accuracy']:.4f}, loss {results['loss']:.4f} "
          f"({results['num_images']} images)")
    print(f"checkpoint: {ckpt_dir}")
    return results
