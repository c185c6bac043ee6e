"""Train the small CNN classifier that sample.py uses for classifier-rejection sampling (sampling.accept_n).

    python scripts/train_classifier.py dataset=fashionmnist_small      # 300 steps, > 80% test accuracy on CPU
    python scripts/sample.py ... checkpoint_classifier=outputs/train_classifier/.../checkpoints/last sampling.accept_n=8

Train it on the tokenizer's data (same image_size and channels). Writes to the run dir: config.yaml,
metrics.jsonl, checkpoints/last (stage "classifier") and eval.json with the test accuracy.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from vqgpt.checkpoint import save_checkpoint
from vqgpt.classifier import Classifier
from vqgpt.config import TrainClassifierRun, register_configs, to_object
from vqgpt.data import build_dataset, dataset_info
from vqgpt.errors import UserError
from vqgpt.loggers import build_logger, progress
from vqgpt.optim import adamw, lr_at, set_lr
from vqgpt.runtime import pick_device, resolve_out_dir, save_resolved_config, seed_everything, user_errors

register_configs()


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


def train(run: TrainClassifierRun, out_dir: Path, config: dict) -> dict:
    """trainer.max_steps of cross-entropy on the train split, then test accuracy; saves checkpoints/last."""
    t = run.trainer
    device = pick_device(t.device)
    seed_everything(t.seed)
    train_set, test_set = build_dataset(run.dataset, "train"), build_dataset(run.dataset, "test")
    meta = dataset_info(run.dataset, train_set)
    model = Classifier(run.classifier).to(device)
    optimizer = adamw(model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    ckpt_dir = out_dir / "checkpoints" / "last"

    logger = build_logger(run.logger, out_dir, config)
    use_bf16 = device.type == "cuda" and t.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    loader = DataLoader(train_set, batch_size=t.batch_size, shuffle=True, drop_last=True,
                        num_workers=t.num_workers, generator=torch.Generator().manual_seed(t.seed))
    if len(loader) == 0:
        raise UserError(f"trainer.batch_size={t.batch_size} is larger than the {len(train_set)} training images")
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
            with autocast:
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


@hydra.main(config_path="../configs", config_name="train_classifier", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run = to_object(cfg)
        out_dir = resolve_out_dir(run.out_dir)
        config = save_resolved_config(cfg, out_dir)
        train(run, out_dir, config)


if __name__ == "__main__":
    main()
