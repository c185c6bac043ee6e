"""The image pipeline around token sampling: batched sampling, classifier rejection, the decoding GIF and
half-image completion. Everything goes through the Tokenizer interface (vqgpt/tokenizers/base.py).

    models = load_models(SampleRun(checkpoint_vae=..., checkpoint_gpt=...), device)
    images = sample_images(models, cond=torch.arange(10), num=10, s=SamplingConfig(top_k=100), batch_size=64)
    paths = sample(run, models, out_dir)      # what scripts/sample.py writes
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image

from vqgpt.checkpoint import checkpoint_hash, dataclass_from_dict, load_checkpoint
from vqgpt.config import DatasetConfig, SampleRun, SamplingOptions
from vqgpt.data import build_dataset
from vqgpt.errors import UserError
from vqgpt.generate.sampling import check_sampling_args, generate, resolve_class
from vqgpt.images import save_grid, to_unit
from vqgpt.models.image_classifier import best_of, class_scores
from vqgpt.progress import progress
from vqgpt.tokenizers import Tokenizer


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


def check_sample_run(run: SampleRun, gpt: nn.Module) -> None:
    """Every sampling option, checked before anything is written (one-line UserErrors)."""
    s = run.sampling
    check_sampling_args(gpt.config.vocab_size, s.temperature, s.top_k, s.top_p, s.cfg_scale, gpt.config.num_classes)
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
        print(f"{run.checkpoint_gpt}: sampling with its EMA weights (ema=false for the raw ones)")
    check_pair(tok.model, gpt.model, run.checkpoint_vae, run.checkpoint_gpt)
    check_sample_run(run, gpt.model)
    resolve_class(run.sampling.class_label, gpt.meta.get("class_names"), gpt.model.config.num_classes)
    hashes = {key: checkpoint_hash(getattr(run, key)) for key in ("checkpoint_vae", "checkpoint_gpt")}
    saved_hash = gpt.meta.get("tokenizer_hash")
    if saved_hash and saved_hash != hashes["checkpoint_vae"]:  # same shapes, other weights
        print(f"warning: {run.checkpoint_gpt} was trained on codes of another tokenizer than {run.checkpoint_vae} "
              "(the weights differ); samples may be noise", file=sys.stderr)
    models = Models(tok.model, gpt.model, gpt.meta.get("class_names"), tok.meta.get("data_config"), hashes=hashes)
    if run.checkpoint_classifier and (run.sampling.accept_n or 1) > 1:
        classifier = load_checkpoint(run.checkpoint_classifier, expected_stage="classifier", map_location=device)
        check_classifier(classifier.model, tok.model, gpt.model, run.checkpoint_classifier)
        models.classifier = classifier.model
        hashes["checkpoint_classifier"] = checkpoint_hash(run.checkpoint_classifier)
    return models


def check_outputs(out_dir: Path, run: SampleRun, models: Models) -> None:
    """Refuse, before anything is written, a run dir whose output names are taken by something else, or
    that holds images of other settings (check_resume)."""
    images = out_dir / "images"
    if images.exists() and not images.is_dir():
        raise UserError(f"{images} is a file, but sample.py writes one PNG per image into that folder; move it "
                        "away or pick another run dir (hydra.run.dir=...)")
    for name in ("samples.png", "decoding.gif", "completion.png", MANIFEST):
        if (out_dir / name).is_dir():
            raise UserError(f"{out_dir / name} is a directory; move it away or pick another run dir")
    check_resume(out_dir, sampling_manifest(run, models, planned_images(run, models)[2]))


# ---------------------------------------------------------------------------------------------------------
# Sampling


def sample_kwargs(s: SamplingOptions) -> dict:
    """The options `generate` takes from SamplingOptions (all but seed, class_label, accept_n)."""
    return {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "cfg_scale": s.cfg_scale,
            "compile": s.compile}


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
        out.append(generate(gpt, n, cond=chunk, seed=s.seed + i, **sample_kwargs(s)))
    return torch.cat(out)


def sample_images(models: Models, cond: torch.Tensor | None, num: int, s: SamplingOptions,
                  batch_size: int) -> torch.Tensor:
    """(num, C, H, W) images; with accept_n > 1, each the classifier's best of accept_n candidates."""
    n = s.accept_n or 1
    if n == 1:
        return decode(models.tokenizer, sample_tokens(models.gpt, cond, num, s, batch_size), batch_size)
    cond_n = None if cond is None else cond.repeat_interleave(n)  # candidates of one image are adjacent
    images = decode(models.tokenizer, sample_tokens(models.gpt, cond_n, num * n, s, batch_size), batch_size)
    starts = range(0, len(images), batch_size)
    scores = torch.cat([class_scores(models.classifier, images[i:i + batch_size],
                                     None if cond_n is None else cond_n[i:i + batch_size]) for i in starts])
    scores = scores.view(num, n)
    print(f"classifier rejection: best of {n}; mean p(class) {scores.exp().mean():.3f} over all candidates, "
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


def sample_class_grid(tokenizer: Tokenizer, gpt: nn.Module, path: Path, per_class: int, s: SamplingOptions,
                      batch_size: int) -> Path:
    """A PNG of `per_class` samples of every class (one row each), or a square of unconditional ones;
    `batch_size` sequences at a time, so 1,000 classes never mean 8,000 KV caches at once."""
    labels = grid_labels(gpt.config.num_classes, per_class)
    device = next(gpt.parameters()).device
    cond = None if labels is None else torch.tensor(labels, device=device)
    num = len(labels) if labels else per_class * per_class
    images = decode(tokenizer, sample_tokens(gpt, cond, num, s, batch_size), batch_size)
    return save_grid(images, path, nrow=per_class)


def image_names(labels: list[int] | None, num: int, class_names: list[str] | None) -> list[str]:
    """File names `<class>_<i>.png` (i counts within the class), or `sample_<i>.png` when unconditional."""
    if labels is None:
        return [f"sample_{i}.png" for i in range(num)]
    seen: dict[int, int] = {}
    names = []
    for label in labels:
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or str(label)  # "T-shirt/top" -> T-shirt_top
        names.append(f"{name}_{seen.get(label, 0)}.png")
        seen[label] = seen.get(label, 0) + 1
    return names


def planned_images(run: SampleRun, models: Models) -> tuple[int | None, list[int] | None, int]:
    """What sample.py writes: (the one class asked for or None, every image's label or None when the GPT is
    unconditional, the number of images)."""
    s, num_classes = run.sampling, models.gpt.config.num_classes
    label = resolve_class(s.class_label, models.class_names, num_classes)
    labels = grid_labels(num_classes, s.num_samples, label)
    return label, labels, len(labels) if labels else s.num_samples


GRID_MAX = 16  # samples.png shows at most this many images per class row (at most GRID_MAX**2 in a square)
MANIFEST = "samples.json"  # what images/ was sampled with; a rerun into the same run dir resumes from it


def sampling_manifest(run: SampleRun, models: Models, num: int) -> dict:
    """Everything that decides which images a sampling run writes: a rerun with the same manifest resumes."""
    return {"checkpoint_vae": models.hashes["checkpoint_vae"], "checkpoint_gpt": models.hashes["checkpoint_gpt"],
            "ema": run.ema, "checkpoint_classifier": models.hashes.get("checkpoint_classifier"),
            "sampling": dataclasses.asdict(run.sampling), "batch_size": run.batch_size, "num_images": num}


def check_resume(out_dir: Path, manifest: dict) -> None:
    """Refuse to add images to a run dir that holds images of other settings (they would not belong together)."""
    path = out_dir / MANIFEST
    if not path.exists():
        if any((out_dir / "images").glob("*.png")):
            raise UserError(f"{out_dir / 'images'} holds images from an unknown run ({MANIFEST} is missing); "
                            "pick another run dir (hydra.run.dir=...) or delete it")
        return
    old = json.loads(path.read_text())
    changed = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
    if changed:
        raise UserError(f"{out_dir} holds samples made with other settings (differs in: {', '.join(changed)}); "
                        "rerun with the same settings to resume, or pick another run dir (hydra.run.dir=...)")


def _save_png(image: torch.Tensor, path: Path) -> None:
    """One image (C, H, W) in [-1, 1] as a PNG, written whole or not at all (an interrupt leaves no half file)."""
    part = path.with_name(path.name + ".part")
    save_image(to_unit(image), part, format="PNG")
    os.replace(part, path)


def sample_grid(run: SampleRun, models: Models, out_dir: Path) -> Path:
    """One PNG per image under images/, written batch by batch as decoded (memory flat in the number of
    images), then samples.png: one row per class (up to GRID_MAX each), or a square for one class or none.

    Every batch has seeds of its own (image_batches), so a run stopped midway and started again into the same
    run dir skips the batches whose images are all written and ends with the images an uninterrupted run
    makes; samples.json records the settings, and check_outputs (which `sample` and sample.py call first)
    refuses other settings there."""
    s, num_classes = run.sampling, models.gpt.config.num_classes
    label, labels, num = planned_images(run, models)
    names = image_names(labels, num, models.class_names)
    images_dir = out_dir / "images"
    images_dir.mkdir(exist_ok=True)
    manifest = sampling_manifest(run, models, num)  # check_outputs refused other settings before anything ran
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    rows = 1 if labels is None or label is not None or num_classes == 1 else num_classes
    per_row = min(s.num_samples if rows > 1 else math.ceil(math.sqrt(num)), GRID_MAX)
    if rows > 1:  # the first per_row of each class
        shown = {i for i in range(num) if i % s.num_samples < per_row}
    else:
        shown = set(range(min(num, per_row ** 2)))
    grid: dict[int, torch.Tensor] = {}
    device = next(models.gpt.parameters()).device
    bar = progress(total=num, desc="sampling images")
    mode = "L" if models.tokenizer.channels == 1 else "RGB"
    for index, settings in image_batches(num, s, run.batch_size):
        paths = [images_dir / names[j] for j in index]
        if all(path.exists() for path in paths):  # written by an earlier run of the same settings
            for j in set(index) & shown:
                with Image.open(paths[j - index.start]) as png:
                    grid[j] = pil_to_tensor(png.convert(mode)).float() / 127.5 - 1.0
        else:
            cond = None if labels is None else torch.tensor(labels[index.start:index.stop], device=device)
            images = sample_images(models, cond, len(index), settings, run.batch_size)
            for j, image, path in zip(index, images, paths, strict=True):
                if not path.exists():
                    _save_png(image, path)
                if j in shown:
                    grid[j] = image.cpu()
        bar.update(len(index))
    bar.close()
    picked = torch.stack([grid[j] for j in sorted(grid)])
    return save_grid(picked, out_dir / "samples.png", nrow=per_row if rows > 1 else None)


# ---------------------------------------------------------------------------------------------------------
# Decoding GIF


def decoding_frames(models: Models, cond: torch.Tensor | None, num: int, s: SamplingOptions,
                    every: int) -> list[torch.Tensor]:
    """Token grids (num, T), one every `every` tokens and at the end: the tokens so far, the rest filled.

    The rest is filled with the model's best guess for the newest position (the argmax of the latest logits, or
    a patch GPT's predicted mean): a neutral, image-like background rather than the arbitrary code 0, and cheap
    (no extra forward passes).
    """
    block_size = models.gpt.config.block_size
    grids: list[torch.Tensor] = []

    def record(step: int, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        done = step + 1
        if done % every and done != block_size:
            return
        guess = logits.argmax(dim=-1) if models.gpt.is_discrete else models.gpt.mean(logits)  # (B,) or (B, D)
        grid = guess[:, None].expand(-1, block_size, *guess.shape[1:]).clone()  # (B, T[, D])
        grid[:, :done] = tokens
        grids.append(grid)

    generate(models.gpt, num, cond=cond, seed=s.seed, callback=record, **sample_kwargs(s))
    return grids


def write_gif(frames: list[torch.Tensor], path: Path, min_side: int = 128) -> Path:
    """Frames, each (B, C, H, W) in [-1, 1] shown side by side, as a looping GIF (last frame held)."""
    pictures = []
    for images in frames:
        grid = make_grid(to_unit(images), nrow=images.shape[0], padding=2, pad_value=1.0)  # (3, H', W')
        picture = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
        scale = max(1, math.ceil(min_side / images.shape[-1]))  # small images: enlarge, pixels kept sharp
        pictures.append(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))
    durations = [120] * (len(pictures) - 1) + [1500]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path


def decoding_gif(run: SampleRun, models: Models, out_dir: Path) -> Path:
    """decoding.gif: gif_samples images appearing token by token (one frame per row of tokens by default)."""
    num_classes = models.gpt.config.num_classes
    label = resolve_class(run.sampling.class_label, models.class_names, num_classes)
    device = next(models.gpt.parameters()).device
    cond = None
    if num_classes:  # different classes side by side, unless one is asked for
        cond = torch.arange(run.gif_samples, device=device) % num_classes if label is None else \
            torch.full((run.gif_samples,), label, device=device)
    every = run.gif_every or models.tokenizer.latent_grid[1]
    grids = decoding_frames(models, cond, run.gif_samples, run.sampling, every)
    return write_gif([decode(models.tokenizer, grid) for grid in grids], out_dir / "decoding.gif")


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
    tokens = generate(models.gpt, len(prefix), cond=cond, seed=s.seed, prefix=prefix, **sample_kwargs(s))
    return real, tokens.view(len(images), num, h, w, *tokens.shape[2:])


def completion_figure(run: SampleRun, models: Models, out_dir: Path) -> Path:
    """completion.png: per test image, input (bottom half grey) | completion_samples samples | original."""
    if not models.data_config:
        raise UserError(f"{run.checkpoint_vae} records no data_config, so there are no test images to complete; "
                        "re-save it with scripts/train_tokenizer.py")
    test_set = build_dataset(dataclass_from_dict(DatasetConfig, models.data_config), "test", train=False)
    picks = torch.linspace(0, len(test_set) - 1, min(run.completion_images, len(test_set))).long()  # spread out
    device = next(models.gpt.parameters()).device
    images = torch.stack([test_set[i][0] for i in picks.tolist()]).to(device)
    labels = torch.tensor([test_set[i][1] for i in picks.tolist()], device=device)
    _, samples = complete(models, images, labels if models.gpt.config.num_classes else None,
                          run.completion_samples, run.sampling)
    h = models.tokenizer.latent_grid[0]
    masked = images.clone()
    masked[:, :, (h // 2) * models.tokenizer.pixels_per_token:] = 0.0  # grey in [-1, 1]
    decoded = decode(models.tokenizer, samples.flatten(0, 1)).view(len(images), run.completion_samples,
                                                                     *images.shape[1:])
    rows = torch.cat([masked[:, None], decoded, images[:, None]], dim=1).flatten(0, 1)
    return save_grid(rows, out_dir / "completion.png", nrow=run.completion_samples + 2)


def sample(run: SampleRun, models: Models, out_dir: Path) -> list[Path]:
    """Every output asked for; returns the paths written."""
    check_outputs(out_dir, run, models)
    written = [sample_grid(run, models, out_dir)]
    if run.gif:
        written.append(decoding_gif(run, models, out_dir))
    if run.completion:
        written.append(completion_figure(run, models, out_dir))
    return written
