"""The classifier behind sample.py's classifier rejection (`sampling.accept_n`): cross-entropy on the train
split, then test accuracy.

    results = train_classifier(run, out_dir, config)     # run: TrainClassifierRun
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vqgpt.config import TrainClassifierRun
from vqgpt.data import build_dataset, dataset_info, eval_split
from vqgpt.models.image_classifier import Classifier
from vqgpt.train.engine import Engine


@torch.no_grad()
def evaluate(model: Classifier, dataset: Dataset, device: torch.device, batch_size: int,
             num_workers: int = 0) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the whole split, in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += len(labels)
    model.train(was_training)
    return {"accuracy": correct / count, "loss": loss / count, "num_images": count}


class ClassifierTask:
    """Cross-entropy on the train split, grad_accum micro-batches per step."""

    stage, arch = "classifier", "classifier"

    def __init__(self, run: TrainClassifierRun, engine: Engine):
        with engine.main_first():  # one download per machine
            self.train_set = build_dataset(run.dataset, "train")
            self.eval_split = eval_split(run.dataset)  # what training reports on: val when held out, else test
            self.test_set = build_dataset(run.dataset, self.eval_split)
        engine.check_data(self.train_set)
        self.meta = dataset_info(run.dataset, self.train_set)
        num_classes = run.classifier.num_classes or self.meta["num_classes"]  # null: from the data (folders)
        self.model = Classifier(dataclasses.replace(run.classifier, num_classes=num_classes)).to(engine.device)
        self.net = engine.prepare(self.model, convnet=True)
        self.modules = {"model": self.model}
        self.optimizers = {"model": engine.adamw(self.model)}
        self.device, self.batch_size, self.num_workers = engine.device, run.trainer.batch_size, run.trainer.num_workers

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"{self.meta['dataset']}: {len(self.train_set)} train / {len(self.test_set)} "
                f"{self.eval_split} images, "
                f"{self.meta['num_classes']} classes; classifier {n_params / 1e6:.2f}M params")

    def train_step(self, e: Engine, step: int) -> dict[str, Any]:
        total = torch.zeros((), device=e.device)
        for images, labels in e.micro_batches(self.net):
            with e.autocast:
                loss = F.cross_entropy(self.net(images).float(), labels)
            e.backward(loss / e.t.grad_accum)
            total += loss.detach() / e.t.grad_accum
        e.optimizer_step("model")
        return {"train/loss": total}

    def evaluate(self, model: Classifier) -> dict[str, float]:
        return evaluate(model, self.test_set, self.device, self.batch_size, self.num_workers)

    def snapshot(self, model: Classifier, step: int) -> None:
        return None

    def summary(self, results: dict[str, float]) -> str:
        return f"accuracy {results['accuracy']:.4f}, loss {results['loss']:.4f} ({results['num_images']} images)"


def train_classifier(run: TrainClassifierRun, out_dir: Path, config: dict) -> dict:
    """trainer.max_steps of cross-entropy on the train split on the engine, then test accuracy."""
    engine = Engine(run.trainer, out_dir, config, run.logger, resume=run.resume)
    return engine.fit(ClassifierTask(run, engine))
