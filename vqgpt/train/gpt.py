"""Stage 2: train a GPT on the token grids of a tokenizer checkpoint, through the Tokenizer interface only.

    results = train_gpt(run, out_dir, config)      # run: TrainGPTRun

The first run tokenizes the dataset once into a token cache (vqgpt/data/token_cache.py); training then reads
only that cache. Writes to out_dir: metrics.jsonl, samples/step_*.png (one row per class), checkpoints/last
(the GPT checkpoint sample.py reads).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vqgpt.checkpoint import checkpoint_hash, load_checkpoint, read_meta, rng_state, save_checkpoint, set_rng_state
from vqgpt.config import GPTConfig, SamplingConfig, TrainGPTRun
from vqgpt.data.token_cache import TokenDataset, prepare_token_cache
from vqgpt.errors import UserError
from vqgpt.generate.pipeline import sample_class_grid
from vqgpt.models.gpt import GPT
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

TOKENIZER_RUNS = Path("outputs") / "train_tokenizer"  # where train_tokenizer.py puts its runs by default


@torch.no_grad()
def evaluate(model: GPT, loader: DataLoader, device: torch.device, conditional: bool) -> float:
    """Mean cross-entropy (nats/token) over the whole split, in eval mode (no label dropout)."""
    model.eval()
    total, count = 0.0, 0
    for tokens, labels in loader:
        tokens = tokens.to(device)
        _, loss = model(tokens, labels.to(device) if conditional else None, targets=tokens)
        total += loss.item() * tokens.numel()
        count += tokens.numel()
    model.train()
    return total / count


def newest_tokenizer(runs: Path = TOKENIZER_RUNS) -> str:
    """The most recently written tokenizer checkpoint under `runs` (train_tokenizer.py's default run dirs)."""
    found = sorted(runs.glob("**/checkpoints/last/config.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"checkpoint_vae is not set and there is no tokenizer checkpoint under {runs}/; train one "
                        "first (python scripts/train_tokenizer.py dataset=...) or pass checkpoint_vae=<dir>")
    path = str(found[-1].parent)
    print(f"checkpoint_vae not set: using the newest tokenizer checkpoint, {path}")
    return path


def gpt_config(run: TrainGPTRun, header: dict, data_classes: int) -> GPTConfig:
    """The GPT's config: vocab and block size from the tokenizer, never from the config files; classes from
    the data unless gpt.num_classes says (0 = unconditional)."""
    h, w = header["grid"]
    num_classes = data_classes if run.gpt.num_classes is None else run.gpt.num_classes
    if run.gpt.num_classes is None and data_classes == 1:  # one class is no condition at all
        num_classes = 0
    if num_classes and num_classes != data_classes:
        raise UserError(f"gpt.num_classes={num_classes} but the data has {data_classes} classes; set it to "
                        f"{data_classes}, to 0 (unconditional), or null (from the data)")
    return dataclasses.replace(run.gpt, vocab_size=header["codebook_size"], block_size=h * w,
                               num_classes=num_classes)


def train_gpt(run: TrainGPTRun, out_dir: Path, config: dict) -> dict:
    """The whole stage: token cache, then trainer.max_steps of next-token prediction, evaluated and saved."""
    t = run.trainer
    check_trainer(t)
    set_threads(t.num_threads)
    device = pick_device(t.device)
    ckpt_dir = out_dir / "checkpoints" / "last"
    check_checkpoint_target(ckpt_dir)
    seed_everything(t.seed)
    vae_path = run.checkpoint_vae or newest_tokenizer()
    if run.resume:  # refuse a resume onto another tokenizer's tokens before tokenizing anything
        trained_on = read_meta(run.resume, expected_stage="gpt").get("tokenizer_hash")
        if trained_on and trained_on != (ours := checkpoint_hash(vae_path)):
            raise UserError(f"resume={run.resume} was trained on the tokens of another tokenizer (weights "
                            f"{trained_on}), not checkpoint_vae={vae_path} ({ours}); pass the "
                            "tokenizer it was trained with, or drop resume= to start a fresh run")
    cache, header = prepare_token_cache(vae_path, run.dataset, run.cache_dir, run.hflip_copies, device)
    tokenizer = load_checkpoint(vae_path, expected_stage="tokenizer", map_location=device).model
    train_set, test_set = TokenDataset(cache, "train"), TokenDataset(cache, "test")
    check_batch_fits(t, len(train_set))

    gpt_cfg = gpt_config(run, header, header["data"]["num_classes"])
    model = GPT(gpt_cfg).to(device)
    conditional = gpt_cfg.num_classes > 0
    optimizer = adamw(model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    meta = {k: header["data"][k] for k in ("dataset", "image_size", "channels", "num_classes", "class_names")}
    meta.update(vocab_size=gpt_cfg.vocab_size, block_size=gpt_cfg.block_size, latent_grid=header["grid"],
                tokenizer_hash=header["tokenizer_hash"], tokenizer_path=str(Path(vae_path).resolve()))

    def save(step: int) -> None:
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state()}
        save_checkpoint(ckpt_dir, model, stage="gpt", arch="gpt", meta=meta, step=step, train_state=state)

    start = 0
    if run.resume:
        state = resume_from(run.resume, model, "gpt")
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]

    logger = build_logger(run.logger, out_dir, config)
    mixed = autocast(device, t.precision)
    generator = torch.Generator().manual_seed(t.seed + start)
    train_loader = DataLoader(train_set, batch_size=t.batch_size, shuffle=True, drop_last=True,
                              num_workers=t.num_workers, generator=generator)
    test_loader = DataLoader(test_set, batch_size=t.batch_size, num_workers=t.num_workers)
    batches = (batch for _ in iter(int, 1) for batch in train_loader)  # shuffled, forever
    n_params = sum(p.numel() for p in model.parameters())
    h, w = header["grid"]
    print(f"{meta['dataset']}: {len(train_set)} train / {len(test_set)} test token grids of {h}x{w}, "
          f"K={gpt_cfg.vocab_size}; GPT {n_params / 1e6:.2f}M params, "
          f"{'class-conditional' if conditional else 'unconditional'}; on {device}")

    model.train()
    bar = progress(total=t.max_steps, initial=start, desc="gpt", enabled=t.progress_bar)
    for step in range(start, t.max_steps):
        lr = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for _ in range(t.grad_accum):  # gradient accumulation: the mean over grad_accum micro-batches
            tokens, labels = next(batches)
            tokens = tokens.to(device, non_blocking=True)
            with mixed:
                _, loss = model(tokens, labels.to(device) if conditional else None, targets=tokens)
            (loss / t.grad_accum).backward()
            step_loss += loss.detach() / t.grad_accum
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()

        bar.update(1)
        done = step + 1
        if step % t.log_every == 0 or done == t.max_steps:
            logger.log({"train/loss": step_loss, "train/lr": lr}, step=done)
            bar.set_postfix(loss=f"{step_loss.item():.4f}")
        if done % t.eval_every == 0 and done != t.max_steps:  # the final evaluation follows the loop
            val = evaluate(model, test_loader, device, conditional)
            logger.log({"val/loss": val, "val/bits_per_token": val / math.log(2)}, step=done)
            bar.write(f"step {done}: val {val:.4f} nats/token, {val / math.log(2):.4f} bits/token")
        if done % t.sample_and_save_freq == 0 or done == t.max_steps:
            path = sample_class_grid(tokenizer, model, out_dir / "samples" / f"step_{done:07d}.png", 8,
                                     SamplingConfig(seed=t.seed), batch_size=t.batch_size)
            logger.log_image("val/samples", path, step=done)
        if done % t.checkpoint_every == 0 or done == t.max_steps:
            save(done)
    bar.close()
    if start >= t.max_steps:
        save(start)

    val = evaluate(model, test_loader, device, conditional)
    logger.log({"val/loss": val, "val/bits_per_token": val / math.log(2)}, step=max(start, t.max_steps))
    logger.finish()
    results = {"val_loss": val, "val_bits_per_token": val / math.log(2)}
    print(f"test split: {val:.4f} nats/token, {val / math.log(2):.4f} bits/token (uniform: "
          f"{math.log(gpt_cfg.vocab_size):.4f} nats)")
    print(f"checkpoint: {ckpt_dir}")
    return results
