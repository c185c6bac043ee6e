"""Stage 2: train a GPT on the token grids of a tokenizer checkpoint.

    python scripts/train_gpt.py checkpoint_vae=outputs/train_tokenizer/<dataset>/<date>/checkpoints/last
    python scripts/train_gpt.py experiment=gpt_demo checkpoint_vae=...        # what `make demo` runs

The first run tokenizes the dataset once into a token cache beside the tokenizer checkpoint; training then
reads only that cache. Writes to the run dir: config.yaml, metrics.jsonl, samples/step_*.png (one row per
class), checkpoints/last (the GPT checkpoint sample.py reads).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from vqgpt.checkpoint import load_checkpoint, load_train_state, rng_state, save_checkpoint, set_rng_state
from vqgpt.config import TrainGPTRun, register_configs, to_object
from vqgpt.errors import UserError
from vqgpt.gpt import GPT
from vqgpt.images import save_grid
from vqgpt.loggers import build_logger, progress
from vqgpt.optim import adamw, lr_at, set_lr
from vqgpt.runtime import autocast, pick_device, resolve_out_dir, save_resolved_config, seed_everything, user_errors
from vqgpt.sampling import generate
from vqgpt.token_cache import TokenDataset, prepare_token_cache

register_configs()


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


@torch.no_grad()
def sample_grid(model: GPT, tokenizer: torch.nn.Module, path: Path, per_class: int, seed: int) -> Path:
    """Decode `per_class` samples of every class (one row each), or a square of unconditional ones."""
    num_classes = model.config.num_classes
    if num_classes:
        cond = torch.arange(num_classes, device=tokenizer.last_layer.device).repeat_interleave(per_class)
        tokens = generate(model, len(cond), cond=cond, seed=seed)
    else:
        tokens = generate(model, per_class * per_class, seed=seed)
    h, w = tokenizer.latent_grid
    images = tokenizer.decode_indices(tokens.view(-1, h, w)).float().clamp(-1, 1)
    return save_grid(images, path, nrow=per_class)


def train(run: TrainGPTRun, out_dir: Path, config: dict) -> dict:
    """The whole stage: token cache, then trainer.max_steps of next-token prediction, evaluated and saved."""
    t = run.trainer
    device = pick_device(t.device)
    seed_everything(t.seed)
    cache, header = prepare_token_cache(run.checkpoint_vae, run.dataset, run.cache_dir, run.hflip_copies, device)
    tokenizer_ckpt = load_checkpoint(run.checkpoint_vae, expected_stage="tokenizer", map_location=device)
    tokenizer, tok_meta = tokenizer_ckpt.model, tokenizer_ckpt.meta
    train_set, test_set = TokenDataset(cache, "train"), TokenDataset(cache, "test")

    # vocab and block size come from the tokenizer, never from the config files.
    h, w = header["grid"]
    gpt_cfg = dataclasses.replace(run.gpt, vocab_size=header["codebook_size"], block_size=h * w,
                                  num_classes=run.gpt.num_classes or tok_meta["num_classes"])
    model = GPT(gpt_cfg).to(device)
    conditional = gpt_cfg.num_classes > 0
    optimizer = adamw(model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    meta = {k: tok_meta[k] for k in ("dataset", "image_size", "channels", "num_classes", "class_names")}
    meta.update(vocab_size=gpt_cfg.vocab_size, block_size=gpt_cfg.block_size, latent_grid=[h, w],
                tokenizer_hash=header["tokenizer_hash"], tokenizer_path=header["tokenizer_path"])
    ckpt_dir = out_dir / "checkpoints" / "last"

    def save(step: int) -> None:
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state()}
        save_checkpoint(ckpt_dir, model, stage="gpt", arch="gpt", meta=meta, step=step, train_state=state)

    start = 0
    if run.resume:
        model.load_state_dict(load_checkpoint(run.resume, expected_stage="gpt").model.state_dict())
        state = load_train_state(run.resume)
        if state is None:
            raise UserError(f"resume={run.resume} has no train_state.pt to resume from; start a fresh run instead")
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]

    logger = build_logger(run.logger, out_dir, config)
    mixed = autocast(device, t.precision)
    generator = torch.Generator().manual_seed(t.seed + start)
    train_loader = DataLoader(train_set, batch_size=t.batch_size, shuffle=True, drop_last=True,
                              num_workers=t.num_workers, generator=generator)
    test_loader = DataLoader(test_set, batch_size=t.batch_size, num_workers=t.num_workers)
    if len(train_loader) == 0:
        raise UserError(f"trainer.batch_size={t.batch_size} is larger than the {len(train_set)} training images")
    batches = (batch for _ in iter(int, 1) for batch in train_loader)  # shuffled, forever
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{meta['dataset']}: {len(train_set)} train / {len(test_set)} test token grids of {h}x{w}, "
          f"K={gpt_cfg.vocab_size}; GPT {n_params / 1e6:.2f}M params, "
          f"{'class-conditional' if conditional else 'unconditional'}; on {device}")

    model.train()
    bar = progress(total=t.max_steps, initial=start, desc="gpt", enabled=t.progress_bar)
    for step in range(start, t.max_steps):
        lr = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        for _ in range(t.grad_accum):  # gradient accumulation: the mean over grad_accum micro-batches
            tokens, labels = next(batches)
            tokens = tokens.to(device, non_blocking=True)
            with mixed:
                _, loss = model(tokens, labels.to(device) if conditional else None, targets=tokens)
            (loss / t.grad_accum).backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()

        bar.update(1)
        done = step + 1
        if step % t.log_every == 0 or done == t.max_steps:
            logger.log({"train/loss": loss, "train/lr": lr}, step=done)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if done % t.eval_every == 0 or done == t.max_steps:
            val = evaluate(model, test_loader, device, conditional)
            logger.log({"val/loss": val, "val/bits_per_token": val / math.log(2)}, step=done)
            bar.write(f"step {done}: val {val:.4f} nats/token, {val / math.log(2):.4f} bits/token")
        if done % t.sample_and_save_freq == 0 or done == t.max_steps:
            path = sample_grid(model, tokenizer, out_dir / "samples" / f"step_{done:07d}.png", 8, seed=t.seed)
            logger.log_image("val/samples", path, step=done)
        if done % t.checkpoint_every == 0 or done == t.max_steps:
            save(done)
    bar.close()
    if start >= t.max_steps:
        save(start)

    val = evaluate(model, test_loader, device, conditional)
    logger.finish()
    results = {"val_loss": val, "val_bits_per_token": val / math.log(2)}
    print(f"test split: {val:.4f} nats/token, {val / math.log(2):.4f} bits/token (uniform: "
          f"{math.log(gpt_cfg.vocab_size):.4f} nats)")
    print(f"checkpoint: {ckpt_dir}")
    return results


@hydra.main(config_path="../configs", config_name="train_gpt", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run = to_object(cfg)
        out_dir = resolve_out_dir(run.out_dir)
        config = save_resolved_config(cfg, out_dir)
        train(run, out_dir, config)


if __name__ == "__main__":
    main()
