"""Stage 1: train a tokenizer, then evaluate it on the test split. A tokenizer with a `fit` (the pixel palette's
k-means, seconds; the patch cutter, nothing to learn) is fitted, saved, drawn and evaluated at once; the others
(the VQ-GAN) train on the engine.

    results = train_tokenizer(run, out_dir, config)     # run: TrainTokenizerRun

Writes to out_dir: metrics.jsonl, reconstructions/step_*.png (inputs above, reconstructions below),
checkpoints/last (the tokenizer checkpoint the GPT stage reads) and eval.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from vqgpt import registry
from vqgpt.checkpoint import save_checkpoint
from vqgpt.config import TrainTokenizerRun
from vqgpt.data import build_dataset, dataset_info, eval_split
from vqgpt.device import pick_device, set_threads
from vqgpt.errors import UserError, argument_prefix
from vqgpt.eval.lpips import build_lpips
from vqgpt.eval.reconstruction import reconstruction_metrics
from vqgpt.images import save_grid
from vqgpt.tokenizers import Tokenizer
from vqgpt.tokenizers.vqgan.discriminator import build_discriminator
from vqgpt.tokenizers.vqgan.losses import LPIPS_MIN_SIZE, VQGANLoss
from vqgpt.tokenizers.vqgan.model import VQGAN
from vqgpt.train.engine import Engine


def eval_lpips(run: TrainTokenizerRun, perceptual: torch.nn.Module | None = None,
               weights: str | None = None) -> torch.nn.Module | None:
    """The training LPIPS net, or a fresh one for evaluation; None (reported as such) when it cannot run."""
    if perceptual is not None:
        return perceptual
    if run.dataset.image_size < LPIPS_MIN_SIZE:
        print(f"eval: LPIPS skipped, images are smaller than {LPIPS_MIN_SIZE} px")
        return None
    try:
        return build_lpips(weights)
    except UserError as e:
        print(f"eval: LPIPS skipped: {e}")
        return None


def check_data_fits(run: TrainTokenizerRun) -> None:
    """The tokenizer must be built for the images the dataset gives."""
    tok, data = run.tokenizer, run.dataset
    if (tok.in_channels, tok.image_size) != (data.channels, data.image_size):
        raise UserError(f"tokenizer.in_channels={tok.in_channels}, tokenizer.image_size={tok.image_size} but the "
                        f"dataset gives {data.channels}x{data.image_size}px images; leave them at "
                        "${dataset.channels} and ${dataset.image_size}, or set dataset.channels/dataset.image_size")


class VQGANTask:
    """The VQ-GAN: a generator (autoencoder + codebook) step, then from disc_start a discriminator step, each with
    its own optimizer (taming's two optimizers, one after the other)."""

    stage, arch = "tokenizer", "vqgan"

    def __init__(self, run: TrainTokenizerRun, engine: Engine):
        t = run.trainer
        if t.grad_accum != 1:
            raise UserError("trainer.grad_accum must be 1 for the tokenizer (the GAN's two steps see whole batches); "
                            "raise trainer.batch_size instead")
        check_data_fits(run)
        self.run, self.out_dir, device = run, engine.out_dir, engine.device
        with engine.main_first():  # one download per machine
            self.train_set = build_dataset(run.dataset, "train")
            self.eval_split = eval_split(run.dataset)  # what training reports on: val when held out, else test
            self.test_set = build_dataset(run.dataset, self.eval_split)
        engine.check_data(self.train_set)
        loss = run.tokenizer.loss
        with argument_prefix("tokenizer."):  # the command line's names for the config's keys
            self.model = VQGAN(run.tokenizer).to(device)
            discriminator = build_discriminator(run.tokenizer)
            lpips_net = (build_lpips(loss.lpips_weights, net=loss.perceptual_net) if loss.perceptual_weight > 0
                         else None)
            with argument_prefix("loss."):
                self.criterion = VQGANLoss(loss, lpips_net, discriminator).to(device)
        self.discriminator = self.criterion.discriminator
        self.modules = {"model": self.model, "discriminator": self.discriminator}
        self.optimizers = {"model": engine.adamw(self.model), "discriminator": engine.adamw(self.discriminator)}
        pretraining = getattr(run.tokenizer.quantizer, "pretrain_steps", 0) > 0  # the quantizer sits idle at first
        if t.compile:  # the adaptive GAN weight backpropagates twice through the compiled graph (retain_graph)
            from torch._functorch import config as functorch_config

            functorch_config.donated_buffer = False
        self.net = engine.prepare(self.model, convnet=True, find_unused=pretraining)
        self.disc_net = engine.prepare(self.discriminator, convnet=True)
        self.fixed = torch.stack([self.test_set[i][0] for i in range(min(8, len(self.test_set)))]).to(device)
        training_vgg = self.criterion.perceptual if loss.perceptual_net == "vgg" else None  # the metric is VGG's
        self.lpips_eval = eval_lpips(run, training_vgg, loss.lpips_weights) if engine.is_main else None
        self.device, self.batch_size, self.num_workers = device, t.batch_size, t.num_workers
        # The full data config too, so the GPT stage tokenizes exactly the data this tokenizer saw.
        self.meta = dataset_info(run.dataset, self.train_set)
        self.meta.update(self.model.checkpoint_meta(), data_config=dataclasses.asdict(run.dataset))

    def describe(self) -> str:
        h, w = self.model.latent_grid
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"{self.meta['dataset']}: {len(self.train_set)} train / {len(self.test_set)} {self.eval_split} "
                f"images; VQ-GAN {n_params / 1e6:.2f}M params, {h}x{w} tokens of "
                + (f"K={self.model.codebook_size}" if self.model.is_discrete else f"{self.model.token_dim} numbers"))

    def train_step(self, e: Engine, step: int) -> dict[str, Any]:
        (x, _), crit = e.next_batch(), self.criterion
        gan = crit.gan_active(step)
        self.discriminator.requires_grad_(False)  # the generator's loss reads the discriminator, never trains it
        with e.autocast:
            x_rec, q = self.net(x)
            loss, logs = crit.generator_loss(x, x_rec, q.loss, step, self.model.last_layer)
        e.backward(loss)
        e.optimizer_step("model")
        if gan:
            self.discriminator.requires_grad_(True)
            with e.autocast:
                d_loss, d_logs = crit.discriminator_loss(x, x_rec.detach(), step, discriminator=self.disc_net)
            e.backward(d_loss)
            e.optimizer_step("discriminator")
            logs.update(d_logs)
        return {**logs, **{f"codebook/{k}": v for k, v in q.metrics.items()}}

    def evaluate(self, model: VQGAN) -> dict[str, Any]:
        return reconstruction_metrics(model, self.test_set, self.lpips_eval, self.device, self.batch_size,
                                      self.num_workers)

    def snapshot(self, model: VQGAN, step: int) -> Path:
        return reconstruction_grid(model, self.fixed, self.out_dir / "reconstructions" / f"step_{step:07d}.png")

    def summary(self, results: dict[str, Any]) -> str:
        return summarize(results)


def summarize(results: dict[str, Any]) -> str:
    """A tokenizer's test results on one line."""
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items())


@torch.no_grad()
def reconstruction_grid(model: Tokenizer, images: torch.Tensor, path: Path) -> Path:
    """A PNG of `images` above their reconstructions through the tokens."""
    was_training = model.training
    model.eval()
    recon = model.decode_tokens(model.tokenize(images))
    model.train(was_training)
    return save_grid(torch.cat([images, recon]), path, nrow=images.shape[0])


def train_vqgan(run: TrainTokenizerRun, out_dir: Path, config: dict) -> dict:
    """The VQ-GAN stage on the engine: trainer.max_steps of generator + discriminator steps, then the test split."""
    engine = Engine(run.trainer, out_dir, config, run.logger, resume=run.resume)
    return engine.fit(VQGANTask(run, engine))


def fit_direct(run: TrainTokenizerRun, out_dir: Path, config: dict) -> dict:
    """A tokenizer with a `fit` (no gradient training: the pixel palette's k-means, the patch cutter's nothing):
    built from its config before the data loads, fitted, saved as checkpoints/last at step 0, then evaluated on
    the test split like a VQ-GAN (eval.json, reconstructions/step_0000000.png)."""
    check_data_fits(run)
    set_threads(run.trainer.num_threads)
    model_cls, _ = registry.lookup(run.tokenizer.name, where="tokenizer")
    with argument_prefix("tokenizer."):
        model = model_cls(run.tokenizer)
    train_set, test_set = build_dataset(run.dataset, "train"), build_dataset(run.dataset, eval_split(run.dataset))
    print(model.fit(train_set, run.trainer.seed))
    h, w = model.latent_grid
    print(f"{run.dataset.name}: {h}x{w} = {h * w} tokens per image"
          + (f" of K={model.codebook_size}" if model.is_discrete else f" of {model.token_dim} numbers"))
    meta = dataset_info(run.dataset, train_set)
    meta.update(model.checkpoint_meta(), data_config=dataclasses.asdict(run.dataset))
    ckpt = save_checkpoint(out_dir / "checkpoints" / "last", model, stage="tokenizer", arch=run.tokenizer.name,
                           meta=meta, step=0)
    device = pick_device(run.trainer.device)
    model = model.to(device).eval()
    fixed = torch.stack([test_set[i][0] for i in range(min(8, len(test_set)))]).to(device)
    reconstruction_grid(model, fixed, out_dir / "reconstructions" / "step_0000000.png")
    results = reconstruction_metrics(model, test_set, eval_lpips(run), device, run.trainer.batch_size,
                                     run.trainer.num_workers)
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2))
    print(f"test split: {summarize(results)}")
    print(f"checkpoint: {ckpt}")
    return results


def train_tokenizer(run: TrainTokenizerRun, out_dir: Path, config: dict) -> dict:
    """Train the tokenizer `run.tokenizer` describes (its class, by `tokenizer.name`, from the registry): fitted
    directly when it has a `fit`, else trained on the engine; returns its evaluation on the test split."""
    model_cls, _ = registry.lookup(run.tokenizer.name, where="tokenizer")
    return (fit_direct if model_cls.fit is not None else train_vqgan)(run, out_dir, config)
