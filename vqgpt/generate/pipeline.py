"""The image pipeline around token sampling, in memory: models in, images out, no files written. Batched
sampling, classifier rejection, the decoding GIF's frames and half-image completion, all through the Tokenizer
interface (vqgpt/tokenizers/base.py). What training's pictures, FID and `vqgpt.Pipeline` call; sample.py's files
are writer.py's.

    models = load_models(SampleRun(checkpoint_vae=..., checkpoint_gpt=...), device)
    images = sample_images(models, cond=torch.arange(10), num=10, s=SamplingOptions(top_k=100), batch_size=64)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vqgpt.checkpoint import checkpoint_hash, load_checkpoint, read_meta
from vqgpt.config import SampleRun, SamplingOptions
from vqgpt.errors import ArgumentError, UserError, argument_prefix
from vqgpt.generate.masked import DEFAULT_NOISE, DEFAULT_STEPS, check_masked_args, generate_masked
from vqgpt.generate.quantize import quantize_int8
from vqgpt.generate.sampling import check_sampling_args, generate, resolve_class
from vqgpt.models.image_classifier import best_of, class_scores
from vqgpt.tokenizers import Tokenizer

log = logging.getLogger(__name__)  # scripts print it plainly (cli.py); Python callers configure logging

MASKED_OPTIONS = ("steps", "schedule", "confidence_noise")  # a masked GPT's own
DECODING_OPTIONS = (*MASKED_OPTIONS, "denoising_steps")  # an order's or a head's own (the diffusion head's last)
# How a GPT draws its tokens: train_gpt.py records its run's `sampling` group under these keys, and sample.py,
# edit.py and evaluate.py start from them (the command line's own still win)
RECORDED_SAMPLING = ("temperature", "top_k", "top_p", "cfg_scale", *DECODING_OPTIONS)


@dataclass
class Models:
    """The checked models of one sampling run, in eval mode on one device."""

    tokenizer: Tokenizer
    gpt: nn.Module
    class_names: list[str] | None
    data_config: dict | None  # the tokenizer's DatasetConfig, as saved; completion reads its test split
    classifier: nn.Module | None = None
    hashes: dict[str, str] = field(default_factory=dict)  # checkpoint_hash of each checkpoint loaded, by run key


# ---------------------------------------------------------------------------------------------------------
# Loading and checks


def check_pair(tokenizer: Tokenizer, gpt: nn.Module, vae_path: str, gpt_path: str) -> None:
    """Refuse a GPT whose vocabulary or context does not fit the tokenizer's tokens, naming which, on one line."""
    h, w = tokenizer.latent_grid
    problems = []
    if gpt.is_discrete != tokenizer.is_discrete:
        problems.append(f"the GPT reads {'index' if gpt.is_discrete else 'continuous'} tokens but the tokenizer "
                        f"makes {'index' if tokenizer.is_discrete else 'continuous'} ones")
    elif not gpt.is_discrete and gpt.config.token_dim != tokenizer.token_dim:
        problems.append(f"GPT token_dim={gpt.config.token_dim} but the tokenizer's patches have "
                        f"{tokenizer.token_dim} numbers")
    elif gpt.is_discrete and gpt.config.vocab_size != tokenizer.codebook_size:
        problems.append(f"GPT vocab_size={gpt.config.vocab_size} but the tokenizer has K={tokenizer.codebook_size} "
                        "codes")
    if gpt.config.block_size != h * w:
        problems.append(f"GPT block_size={gpt.config.block_size} but the tokenizer makes {h}x{w}={h * w} tokens "
                        "per image")
    if problems:
        raise UserError(f"checkpoint_gpt={gpt_path} does not fit checkpoint_vae={vae_path}: {'; '.join(problems)}; "
                        "pass the tokenizer the GPT was trained on")


def check_classifier(classifier: nn.Module, tokenizer: Tokenizer, gpt: nn.Module, path: str) -> None:
    """Refuse a classifier that cannot score this tokenizer's images for this GPT's classes."""
    c = classifier.config
    if (c.in_channels, c.image_size) != (tokenizer.channels, tokenizer.image_size):
        raise UserError(f"checkpoint_classifier={path} takes {c.in_channels}x{c.image_size}px images but the "
                        f"tokenizer makes {tokenizer.channels}x{tokenizer.image_size}px; train the classifier on the "
                        "tokenizer's dataset config (train_classifier.py dataset=... dataset.image_size=...)")
    if gpt.config.num_classes and c.num_classes != gpt.config.num_classes:
        raise UserError(f"checkpoint_classifier={path} knows {c.num_classes} classes but the GPT has "
                        f"{gpt.config.num_classes}; train the classifier on the GPT's dataset")


def head_of(gpt: nn.Module) -> str | None:
    """A patch GPT's head (gpt.head), or None for a GPT of index tokens."""
    return None if gpt.is_discrete else gpt.config.head


def check_decoding_options(s: SamplingOptions, masked: bool, head: str | None = None) -> None:
    """Refuse an option of the other decoding order, or of another head (`head`: a patch GPT's, None for index
    tokens) (ArgumentErrors; config-facing callers prefix `sampling.`)."""
    if s.denoising_steps is not None:
        if head != "diffusion":
            raise ArgumentError("denoising_steps", s.denoising_steps, "only a patch GPT with the diffusion head "
                                "(gpt.head=diffusion) takes it: leave it null")
        if s.denoising_steps < 1:
            raise ArgumentError("denoising_steps", s.denoising_steps, "must be a positive integer (DDPM steps per "
                                "token), or null for 50")
    if masked:
        check_masked_args(DEFAULT_STEPS if s.steps is None else s.steps, s.schedule or "cosine",
                          DEFAULT_NOISE if s.confidence_noise is None else s.confidence_noise)
        if s.compile:
            raise ArgumentError("compile", s.compile, "it compiles a raster GPT's one-token decode step, and a masked "
                                "GPT runs a few whole-grid passes instead: leave it false")
    else:
        for key in MASKED_OPTIONS:
            if getattr(s, key) is not None:
                raise ArgumentError(key, getattr(s, key), "only a masked GPT (gpt.name=maskgit) takes it; this one "
                                    "is raster-order, one token per step: leave it null")
    if s.quantize not in (None, "int8"):
        raise ArgumentError("quantize", s.quantize, "must be int8 (dynamic int8 Linear layers, CPU) or null (off)")


def check_sample_run(run: SampleRun, vocab_size: int, num_classes: int, masked: bool = False,
                     head: str | None = None) -> None:
    """Every sampling option, checked against a GPT's vocabulary, classes, order and head (one-line UserErrors)."""
    s = run.sampling
    with argument_prefix("sampling."):
        check_sampling_args(vocab_size, s.temperature, s.top_k, s.top_p, s.cfg_scale, num_classes)
        check_decoding_options(s, masked, head)
    for key, value in (("sampling.num_samples", s.num_samples), ("batch_size", run.batch_size),
                       ("gif_samples", run.gif_samples), ("completion_images", run.completion_images),
                       ("completion_samples", run.completion_samples)):
        if value < 1:
            raise UserError(f"{key}={value} must be a positive integer")
    if run.gif_every is not None and run.gif_every < 1:
        raise UserError(f"gif_every={run.gif_every} must be a positive number of tokens, or null for one row")
    if s.accept_n is not None and s.accept_n < 1:
        raise UserError(f"sampling.accept_n={s.accept_n} must be >= 1 (candidates per image), or null for off")
    if (s.accept_n or 1) > 1 and not run.checkpoint_classifier:
        raise UserError(f"sampling.accept_n={s.accept_n} needs a classifier to score candidates; pass "
                        "checkpoint_classifier=... (scripts/train_classifier.py makes one), or sampling.accept_n=null")


def check_sample_request(run: SampleRun) -> None:
    """sample.py's checks from the checkpoints' config.json files alone (no weights): both are set and of the right
    stage, and every sampling value and the class label fit the GPT. What the script runs before anything is
    written."""
    for key in ("checkpoint_vae", "checkpoint_gpt"):
        if not getattr(run, key):
            raise UserError(f"{key} is not set; pass {key}=<checkpoint directory>")
    read_meta(run.checkpoint_vae, expected_stage="tokenizer")
    meta = read_meta(run.checkpoint_gpt, expected_stage="gpt")
    config = meta["model_config"]
    num_classes = config.get("num_classes") or 0
    check_sample_run(run, config.get("vocab_size", 0), num_classes, masked=meta.get("arch") == "maskgit",
                     head=None if config.get("vocab_size") else config.get("head", "gaussian"))
    resolve_class(run.sampling.class_label, meta.get("class_names"), num_classes)


def with_recorded_sampling(s: SamplingOptions, checkpoint_gpt: str, given: set[str]) -> SamplingOptions:
    """`s` with the sampling the GPT was trained to draw with (its training run's `sampling` group, recorded in
    its checkpoint) in every option of RECORDED_SAMPLING that is not in `given` (the ones the command line set).
    A checkpoint that records none (written before vqgpt recorded it) leaves `s` as it is."""
    recorded = read_meta(checkpoint_gpt, expected_stage="gpt").get("sampling") or {}
    changes = {k: v for k, v in recorded.items() if k in RECORDED_SAMPLING and k not in given and getattr(s, k) != v}
    if changes:
        log.info(f"{checkpoint_gpt}: sampling as it was trained to: "
                 + ", ".join(f"sampling.{k}={v}" for k, v in changes.items()) + " (set them to override)")
    return dataclasses.replace(s, **changes)


def load_models(run: SampleRun, device: torch.device) -> Models:
    """Rebuild tokenizer, GPT (and classifier) from their checkpoints and check that they belong together."""
    for key in ("checkpoint_vae", "checkpoint_gpt"):
        if not getattr(run, key):
            raise UserError(f"{key} is not set; pass {key}=<checkpoint directory>")
    tok = load_checkpoint(run.checkpoint_vae, expected_stage="tokenizer", map_location=device)
    # The tokenizer's weights are the ones the GPT's token cache was made with (EMA when present); `ema` picks the
    # GPT's: its EMA weights when it has them, or the raw trained ones.
    gpt = load_checkpoint(run.checkpoint_gpt, expected_stage="gpt", map_location=device, ema=run.ema)
    if gpt.weights == "ema":
        log.info(f"{run.checkpoint_gpt}: sampling with its EMA weights (ema=false for the raw ones)")
    check_pair(tok.model, gpt.model, run.checkpoint_vae, run.checkpoint_gpt)
    check_sample_run(run, gpt.model.config.vocab_size, gpt.model.config.num_classes, not gpt.model.causal,
                     head_of(gpt.model))
    hashes = {key: checkpoint_hash(getattr(run, key)) for key in ("checkpoint_vae", "checkpoint_gpt")}
    saved_hash = gpt.meta.get("tokenizer_hash")
    if saved_hash and saved_hash != hashes["checkpoint_vae"]:  # same shapes, other weights
        log.warning(f"{run.checkpoint_gpt} was trained on codes of another tokenizer than {run.checkpoint_vae} "
                    "(the weights differ); samples may be noise")
    gpt_model = quantize_int8(gpt.model) if run.sampling.quantize == "int8" else gpt.model
    models = Models(tok.model, gpt_model, gpt.meta.get("class_names"), tok.meta.get("data_config"), hashes=hashes)
    if run.checkpoint_classifier and (run.sampling.accept_n or 1) > 1:
        classifier = load_checkpoint(run.checkpoint_classifier, expected_stage="classifier", map_location=device)
        check_classifier(classifier.model, tok.model, gpt.model, run.checkpoint_classifier)
        models.classifier = classifier.model
        hashes["checkpoint_classifier"] = checkpoint_hash(run.checkpoint_classifier)
    return models


# ---------------------------------------------------------------------------------------------------------
# Sampling


def draw_tokens(gpt: nn.Module, num: int, cond: torch.Tensor | None, s: SamplingOptions, seed: int | None = None,
                **extra: Any) -> torch.Tensor:
    """(num, block_size) tokens by the GPT's own order: `generate` (raster) or `generate_masked` (masked), with the
    options of `s` that apply to it; seed None = s.seed; `extra` (prefix, callback, known and region) passes on."""
    common = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "cfg_scale": s.cfg_scale,
              "seed": s.seed if seed is None else seed}
    if gpt.causal:
        return generate(gpt, num, cond=cond, compile=s.compile, denoising_steps=s.denoising_steps, **common, **extra)
    return generate_masked(gpt, num, cond=cond, steps=DEFAULT_STEPS if s.steps is None else s.steps,
                           schedule=s.schedule or "cosine",
                           confidence_noise=DEFAULT_NOISE if s.confidence_noise is None else s.confidence_noise,
                           **common, **extra)


@torch.no_grad()
def decode(tokenizer: Tokenizer, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token sequences (B, h*w) or grids (B, h, w) (patches: (B, h*w, D) or (B, h, w, D)) -> images
    (B, C, H, W) in [-1, 1], in batches."""
    grids = tokens.reshape(-1, *tokenizer.latent_grid, *([] if tokenizer.is_discrete else [tokenizer.token_dim]))
    return torch.cat([tokenizer.decode_tokens(chunk) for chunk in grids.split(batch_size)])


def sample_tokens(gpt: nn.Module, cond: torch.Tensor | None, num: int, s: SamplingOptions,
                  batch_size: int) -> torch.Tensor:
    """(num, block_size) tokens, `batch_size` sequences at a time; chunk i draws from seed + i."""
    out = []
    for i, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        chunk = None if cond is None else cond[start:start + n]
        out.append(draw_tokens(gpt, n, chunk, s, seed=s.seed + i))
    return torch.cat(out)


def as_labels(models: Models, cond: torch.Tensor | int | str | list | None, num: int) -> torch.Tensor | None:
    """`cond` as (num,) class indices on the GPT's device: one class for all (an index or a name), one per image
    (indices or names), or None (an unconditional GPT)."""
    if cond is None:
        return None
    def index(label: int | str) -> int:  # a name, an index checked against the GPT's classes, or its null class
        if not isinstance(label, str) and label == models.gpt.null_class:
            return label
        return resolve_class(label, models.class_names, models.gpt.config.num_classes)

    if isinstance(cond, (int, str)):
        cond = index(cond)
    elif isinstance(cond, (list, tuple)):
        cond = [index(label) for label in cond]
    device = next(models.gpt.parameters()).device
    cond = torch.as_tensor(cond, dtype=torch.long, device=device)
    return cond.expand(num).clone() if cond.ndim == 0 else cond


def sample_images(models: Models, cond: torch.Tensor | int | str | list | None, num: int, s: SamplingOptions,
                  batch_size: int) -> torch.Tensor:
    """(num, C, H, W) images of the classes `cond` (see as_labels); with accept_n > 1, each the classifier's best
    of accept_n candidates."""
    cond = as_labels(models, cond, num)
    n = s.accept_n or 1
    if n == 1:
        return decode(models.tokenizer, sample_tokens(models.gpt, cond, num, s, batch_size), batch_size)
    cond_n = None if cond is None else cond.repeat_interleave(n)  # candidates of one image are adjacent
    images = decode(models.tokenizer, sample_tokens(models.gpt, cond_n, num * n, s, batch_size), batch_size)
    starts = range(0, len(images), batch_size)
    scores = torch.cat([class_scores(models.classifier, images[i:i + batch_size],
                                     None if cond_n is None else cond_n[i:i + batch_size]) for i in starts])
    scores = scores.view(num, n)
    log.info(f"classifier rejection: best of {n}; mean p(class) {scores.exp().mean():.3f} over all candidates, "
             f"{scores.max(dim=1).values.exp().mean():.3f} kept")
    return best_of(images.view(num, n, *images.shape[1:]), scores)


def image_batches(num: int, s: SamplingOptions, batch_size: int) -> list[tuple[range, SamplingOptions]]:
    """The batches of a run of `num` images, each with the settings it is drawn with: `batch_size` sequences
    at a time (accept_n candidates per image), and seeds that no two batches share, so that any batch can be
    drawn again on its own (resuming) and give the same images."""
    per_image = s.accept_n or 1
    step = max(1, batch_size // per_image)  # images per batch
    chunks = math.ceil(step * per_image / batch_size)  # generate() calls per batch, one seed each
    return [(range(start, min(start + step, num)), dataclasses.replace(s, seed=s.seed + i * chunks))
            for i, start in enumerate(range(0, num, step))]


def grid_labels(num_classes: int, per_class: int, label: int | None = None) -> list[int] | None:
    """Labels of a class grid: `per_class` of every class (or of `label` only), one row each; None when
    the GPT is unconditional."""
    if not num_classes:
        return None
    classes = list(range(num_classes)) if label is None else [label]
    return [c for c in classes for _ in range(per_class)]


def class_grid(tokenizer: Tokenizer, gpt: nn.Module, per_class: int, s: SamplingOptions,
               batch_size: int) -> torch.Tensor:
    """`per_class` samples of every class, class by class (rows of a grid), or per_class**2 unconditional ones
    (B, C, H, W) in [-1, 1]; `batch_size` sequences at a time, so 1,000 classes never mean 8,000 KV caches at once."""
    labels = grid_labels(gpt.config.num_classes, per_class)
    device = next(gpt.parameters()).device
    cond = None if labels is None else torch.tensor(labels, device=device)
    num = len(labels) if labels else per_class * per_class
    return decode(tokenizer, sample_tokens(gpt, cond, num, s, batch_size), batch_size)


# ---------------------------------------------------------------------------------------------------------
# Decoding GIF


def decoding_frames(models: Models, cond: torch.Tensor | None, num: int, s: SamplingOptions,
                    every: int) -> list[torch.Tensor]:
    """Token grids (num, T), one every `every` tokens and at the end: the tokens so far, the rest filled.

    The rest is filled with the model's best guess for the newest position (the argmax of the latest logits, or
    a patch GPT's predicted mean): a neutral, image-like background rather than the arbitrary code 0, and cheap
    (no extra forward passes). A masked GPT gives one grid per decoding step (`every` does not apply), each
    still-masked position filled with that step's argmax there.
    """
    block_size = models.gpt.config.block_size
    grids: list[torch.Tensor] = []
    if not models.gpt.causal:
        mask_token = models.gpt.mask_token

        def record_step(step: int, tokens: torch.Tensor, logits: torch.Tensor) -> None:
            grids.append(torch.where(tokens == mask_token, logits.argmax(dim=-1), tokens))

        draw_tokens(models.gpt, num, cond, s, callback=record_step)
        return grids

    def record(step: int, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        done = step + 1
        if done % every and done != block_size:
            return
        guess = logits.argmax(dim=-1) if models.gpt.is_discrete else models.gpt.mean(logits)  # (B,) or (B, D)
        grid = guess[:, None].expand(-1, block_size, *guess.shape[1:]).clone()  # (B, T[, D])
        grid[:, :done] = tokens
        grids.append(grid)

    draw_tokens(models.gpt, num, cond, s, callback=record)
    return grids


# ---------------------------------------------------------------------------------------------------------
# Completion


def completion_prefix(tokens: torch.Tensor) -> torch.Tensor:
    """Token grids (B, h, w[, D]) -> their top h // 2 rows in raster order (B, (h // 2) * w[, D]): the prefix."""
    return tokens[:, : tokens.shape[1] // 2].flatten(1, 2)


@torch.no_grad()
def complete(models: Models, images: torch.Tensor, labels: torch.Tensor | None, num: int,
             s: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Real token grids (B, h, w[, D]) of `images`, and `num` completions of each (B, num, h, w[, D]) from the
    top half."""
    h, w = models.tokenizer.latent_grid
    if h < 2:
        raise UserError(f"completion needs a token grid at least 2 rows high; this tokenizer makes {h}x{w}")
    real = models.tokenizer.tokenize(images)  # (B, h, w)
    prefix = completion_prefix(real).repeat_interleave(num, dim=0)
    cond = None if labels is None else labels.repeat_interleave(num)
    tokens = draw_tokens(models.gpt, len(prefix), cond, s, prefix=prefix)
    return real, tokens.view(len(images), num, h, w, *tokens.shape[2:])


def completion_rows(models: Models, images: torch.Tensor, labels: torch.Tensor | None, num: int,
                    s: SamplingOptions) -> torch.Tensor:
    """Per image: the input with its bottom half grey, `num` completions, the original: (B * (num + 2), C, H, W)
    in [-1, 1], rows of a grid of num + 2 columns."""
    _, samples = complete(models, images, labels if models.gpt.config.num_classes else None, num, s)
    h = models.tokenizer.latent_grid[0]
    masked = images.clone()
    masked[:, :, (h // 2) * models.tokenizer.pixels_per_token:] = 0.0  # grey in [-1, 1]
    decoded = decode(models.tokenizer, samples.flatten(0, 1)).view(len(images), num, *images.shape[1:])
    return torch.cat([masked[:, None], decoded, images[:, None]], dim=1).flatten(0, 1)
