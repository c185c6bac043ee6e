"""Stage 1: train a tokenizer, then evaluate it on the test split. One task per tokenizer implementation:
`TASKS[type(run.tokenizer)]` (the VQ-GAN's is below; a pixel palette would fit k-means here).

    results = train_tokenizer(run, out_dir, config)     # run: TrainTokenizerRun

Writes to out_dir: metrics.jsonl, reconstructions/step_*.png (inputs above, reconstructions below),
checkpoints/last (the tokenizer checkpoint the GPT stage reads) and eval.json.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from vqgpt.checkpoint import rng_state, save_checkpoint, set_rng_state
from vqgpt.config import TrainTokenizerRun, VQGANConfig
from vqgpt.data import build_dataset, dataset_info
from vqgpt.errors import UserError
from vqgpt.eval.lpips import build_lpips
from vqgpt.eval.metrics import CodebookStats, lpips_distance, psnr, ssim
from vqgpt.images import save_grid
from vqgpt.tokenizers.vqgan.discriminator import build_discriminator
from vqgpt.tokenizers.vqgan.losses import LPIPS_MIN_SIZE, VQGANLoss
from vqgpt.tokenizers.vqgan.model import VQGAN
from vqgpt.train.loggers import build_logger, progress
from vqgpt.train.optim import adamw, lr_at, set_lr
from vqgpt.train.runtime import (
    autocast,
    check_batch_fits,
    check_checkpoint_target,
    check_trainer,
    pick_device,
    resume_from,
    seed_everything,
    set_threads,
)


def batches(dataset: Dataset, batch_size: int, num_workers: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled training images forever, one fresh permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                        generator=generator, persistent_workers=num_workers > 0)
    while True:
        for images, _ in loader:
            yield images


@torch.no_grad()
def evaluate(model: VQGAN, dataset: Dataset, lpips_net: torch.nn.Module | None, device: torch.device,
             batch_size: int, num_workers: int = 0) -> dict[str, float | None]:
    """Reconstruct the whole split through the codes: PSNR, SSIM, LPIPS, codebook usage and perplexity."""
    was_training = model.training
    model.eval()
    stats = CodebookStats(model.codebook_size)
    totals = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    count = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for x, _ in progress(loader, desc="eval"):
        x = x.to(device)
        indices = model.tokenize(x)
        x_rec = model.decode_tokens(indices)
        stats.update(indices)
        totals["psnr"] += psnr(x, x_rec).sum().item()
        totals["ssim"] += ssim(x, x_rec).sum().item()
        if lpips_net is not None:
            totals["lpips"] += lpips_distance(lpips_net, x, x_rec).sum().item()
        count += x.shape[0]
    model.train(was_training)
    results: dict[str, float | None] = {k: v / count for k, v in totals.items()}
    if lpips_net is None:
        results["lpips"] = None
    return {**results, **stats.compute(), "num_images": count}


def eval_lpips(run: TrainTokenizerRun, criterion: VQGANLoss) -> torch.nn.Module | None:
    """The training LPIPS net, or a fresh one for evaluation; None (reported as such) when it cannot run."""
    if criterion.perceptual is not None:
        return criterion.perceptual
    if run.dataset.image_size < LPIPS_MIN_SIZE:
        print(f"eval: LPIPS skipped, images are smaller than {LPIPS_MIN_SIZE} px")
        return None
    try:
        return build_lpips(run.tokenizer.loss.lpips_weights)
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


def train_vqgan(run: TrainTokenizerRun, out_dir: Path, config: dict) -> dict:
    """The VQ-GAN: trainer.max_steps of generator + discriminator steps, checkpoints, then the test split."""
    t = run.trainer
    if t.grad_accum != 1:
        raise UserError("trainer.grad_accum must be 1 for the tokenizer (the GAN's two steps see whole batches); "
                        "raise trainer.batch_size instead")
    check_trainer(t)
    check_data_fits(run)
    set_threads(t.num_threads)
    device = pick_device(t.device)
    ckpt_dir = out_dir / "checkpoints" / "last"
    check_checkpoint_target(ckpt_dir)
    seed_everything(t.seed)
    train_set, test_set = build_dataset(run.dataset, "train"), build_dataset(run.dataset, "test")
    check_batch_fits(t, len(train_set))
    meta = dataset_info(run.dataset, train_set)

    model = VQGAN(run.tokenizer).to(device)
    lpips_net = build_lpips(run.tokenizer.loss.lpips_weights) if run.tokenizer.loss.perceptual_weight > 0 else None
    criterion = VQGANLoss(run.tokenizer.loss, lpips_net, build_discriminator(run.tokenizer)).to(device)
    opt_g = adamw(model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    opt_d = adamw(criterion.discriminator, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    # The full data config too, so the GPT stage tokenizes exactly the data this tokenizer saw.
    meta.update(model.checkpoint_meta(), data_config=dataclasses.asdict(run.dataset))

    def save(step: int) -> None:
        state = {"step": step, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                 "discriminator": criterion.discriminator.state_dict(), "rng": rng_state()}
        save_checkpoint(ckpt_dir, model, stage="tokenizer", arch="vqgan", meta=meta, step=step, train_state=state)

    start = 0
    if run.resume:
        state = resume_from(run.resume, model, "tokenizer")
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        criterion.discriminator.load_state_dict(state["discriminator"])
        set_rng_state(state["rng"])
        start = state["step"]

    logger = build_logger(run.logger, out_dir, config)
    mixed = autocast(device, t.precision)
    fixed = torch.stack([test_set[i][0] for i in range(min(8, len(test_set)))]).to(device)
    data = batches(train_set, t.batch_size, t.num_workers, t.seed + start)
    n_params = sum(p.numel() for p in model.parameters())
    h, w = model.latent_grid
    print(f"{meta['dataset']}: {len(train_set)} train / {len(test_set)} test images; VQ-GAN {n_params / 1e6:.2f}M "
          f"params, {h}x{w} tokens of K={model.codebook_size}; on {device}")

    model.train()
    criterion.train()
    bar = progress(total=t.max_steps, initial=start, desc="tokenizer", enabled=t.progress_bar)
    for step in range(start, t.max_steps):
        lr = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps)
        set_lr(opt_g, lr)
        set_lr(opt_d, lr)
        x = next(data).to(device, non_blocking=True)

        # Generator (autoencoder + codebook) step.
        with mixed:
            x_rec, q = model(x)
            loss, logs = criterion.generator_loss(x, x_rec, q.loss, step, model.last_layer)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt_g.step()

        # Discriminator step, from disc_start on (taming's two optimizers, one after the other).
        if criterion.gan_active(step):
            with mixed:
                d_loss, d_logs = criterion.discriminator_loss(x, x_rec.detach(), step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(criterion.discriminator.parameters(), t.grad_clip)
            opt_d.step()
            logs.update(d_logs)

        bar.update(1)
        done = step + 1
        if step % t.log_every == 0 or done == t.max_steps:
            logs.update({f"codebook/{k}": v for k, v in q.metrics.items()}, **{"train/lr": lr})
            logger.log(logs, step=done)
            bar.set_postfix(loss=f"{logs['train/loss'].item():.4f}", rec=f"{logs['train/rec_loss'].item():.4f}",
                            usage=f"{float(q.metrics.get('usage', float('nan'))):.2f}")
        if done % t.eval_every == 0 and done != t.max_steps:  # the final evaluation follows the loop
            val = evaluate(model, test_set, criterion.perceptual, device, t.batch_size, t.num_workers)
            logger.log({f"val/{k}": v for k, v in val.items() if v is not None}, step=done)
            bar.write(f"step {done}: test PSNR {val['psnr']:.2f} dB, usage {val['usage']:.3f}")
        if done % t.sample_and_save_freq == 0 or done == t.max_steps:
            model.eval()
            with torch.no_grad():
                recon = model.decode_tokens(model.tokenize(fixed))
            model.train()
            path = save_grid(torch.cat([fixed, recon]), out_dir / "reconstructions" / f"step_{done:07d}.png",
                             nrow=fixed.shape[0])
            logger.log_image("val/reconstructions", path, step=done)
        if done % t.checkpoint_every == 0 or done == t.max_steps:
            save(done)
    bar.close()
    if start >= t.max_steps:
        save(start)

    results = evaluate(model, test_set, eval_lpips(run, criterion), device, t.batch_size, t.num_workers)
    logger.log({f"val/{k}": v for k, v in results.items() if v is not None}, step=t.max_steps)
    logger.finish()
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2))
    shown = {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in results.items()}
    print("test split: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    print(f"checkpoint: {ckpt_dir}")
    return results


# One training task per tokenizer schema; a new tokenizer adds its own.
TASKS: dict[type, Callable[[TrainTokenizerRun, Path, dict], dict]] = {VQGANConfig: train_vqgan}


def train_tokenizer(run: TrainTokenizerRun, out_dir: Path, config: dict) -> dict:
    """Train the tokenizer `run.tokenizer` describes; returns its evaluation on the test split."""
    return TASKS[type(run.tokenizer)](run, out_dir, config)
