"""What scripts/sample.py writes, around the in-memory pipeline (pipeline.py): one PNG per image and the grid
(resumable: a rerun into the same run dir draws only what is missing), the decoding GIF and the completion figure;
and what scripts/edit.py writes around edit.py.

    models = load_models(run, device)
    plan = plan_outputs(run, models)            # decided once; a bad class label is refused here
    check_outputs(out_dir, plan)                # before anything is written
    paths = write_outputs(run, models, out_dir, plan)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image

from vqgpt.config import DatasetConfig, EditRun, SampleRun, SamplingConfig, dataclass_from_dict
from vqgpt.data import build_dataset
from vqgpt.errors import UserError
from vqgpt.generate.edit import box_region, edit_images, edit_rows, mask_region
from vqgpt.generate.pipeline import (
    Models,
    check_sample_request,
    completion_rows,
    decode,
    decoding_frames,
    grid_labels,
    image_batches,
    sample_images,
)
from vqgpt.generate.sampling import resolve_class
from vqgpt.images import save_grid, to_model_space, to_pil, to_unit
from vqgpt.progress import progress

GRID_MAX = 16  # samples.png shows at most this many images per class row (at most GRID_MAX**2 in a square)
MANIFEST = "samples.json"  # what images/ was sampled with; a rerun into the same run dir resumes from it


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


@dataclass
class Plan:
    """What sample.py writes, decided once: the one class asked for (or None), every image's label (None when the
    GPT is unconditional), their number, and the manifest a rerun resumes from."""

    label: int | None
    labels: list[int] | None
    num: int
    manifest: dict


def plan_outputs(run: SampleRun, models: Models) -> Plan:
    """The plan of `run` (its class label resolved here, once: a bad one is refused before anything is written)."""
    s, num_classes = run.sampling, models.gpt.config.num_classes
    label = resolve_class(s.class_label, models.class_names, num_classes)
    labels = grid_labels(num_classes, s.num_samples, label)
    num = len(labels) if labels else s.num_samples
    return Plan(label, labels, num, sampling_manifest(run, models, num))


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


def check_outputs(out_dir: Path, plan: Plan) -> None:
    """Refuse, before anything is written, a run dir whose output names are taken by something else, or
    that holds images of other settings (check_resume)."""
    images = out_dir / "images"
    if images.exists() and not images.is_dir():
        raise UserError(f"{images} is a file, but sample.py writes one PNG per image into that folder; move it "
                        "away or pick another run dir (hydra.run.dir=...)")
    for name in ("samples.png", "decoding.gif", "completion.png", MANIFEST):
        if (out_dir / name).is_dir():
            raise UserError(f"{out_dir / name} is a directory; move it away or pick another run dir")
    check_resume(out_dir, plan.manifest)


def _save_png(image: torch.Tensor, path: Path) -> None:
    """One image (C, H, W) in [-1, 1] as a PNG, written whole or not at all (an interrupt leaves no half file)."""
    part = path.with_name(path.name + ".part")
    save_image(to_unit(image), part, format="PNG")
    os.replace(part, path)


def sample_grid(run: SampleRun, models: Models, out_dir: Path, plan: Plan) -> Path:
    """One PNG per image under images/, written batch by batch as decoded (memory flat in the number of
    images), then samples.png: one row per class (up to GRID_MAX each), or a square for one class or none.

    Every batch has seeds of its own (image_batches), so a run stopped midway and started again into the same
    run dir skips the batches whose images are all written and ends with the images an uninterrupted run
    makes; samples.json records the settings, and check_outputs (which sample.py calls first) refuses other
    settings there."""
    s, num_classes = run.sampling, models.gpt.config.num_classes
    label, labels, num = plan.label, plan.labels, plan.num
    names = image_names(labels, num, models.class_names)
    images_dir = out_dir / "images"
    images_dir.mkdir(exist_ok=True)
    # check_outputs refused other settings before anything ran
    (out_dir / MANIFEST).write_text(json.dumps(plan.manifest, indent=2) + "\n")
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


def decoding_gif(run: SampleRun, models: Models, out_dir: Path, plan: Plan) -> Path:
    """decoding.gif: gif_samples images appearing token by token (one frame per row of tokens by default)."""
    num_classes = models.gpt.config.num_classes
    label = plan.label
    device = next(models.gpt.parameters()).device
    cond = None
    if num_classes:  # different classes side by side, unless one is asked for
        cond = torch.arange(run.gif_samples, device=device) % num_classes if label is None else \
            torch.full((run.gif_samples,), label, device=device)
    every = run.gif_every or models.tokenizer.latent_grid[1]
    grids = decoding_frames(models, cond, run.gif_samples, run.sampling, every)
    return write_gif([decode(models.tokenizer, grid) for grid in grids], out_dir / "decoding.gif")


def test_images(models: Models, num: int, checkpoint_vae: str, purpose: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` images (B, C, H, W) of the tokenizer's test split, spread over it, and their labels (B,), on the GPT's
    device; `purpose` ("complete", "edit") names what they are for in the error of a tokenizer without data."""
    if not models.data_config:
        raise UserError(f"{checkpoint_vae} records no data_config, so there are no test images to {purpose}; "
                        "re-save it with scripts/train_tokenizer.py")
    test_set = build_dataset(dataclass_from_dict(DatasetConfig, models.data_config), "test", train=False)
    picks = torch.linspace(0, len(test_set) - 1, min(num, len(test_set))).long().tolist()  # spread out
    device = next(models.gpt.parameters()).device
    images = torch.stack([test_set[i][0] for i in picks]).to(device)
    return images, torch.tensor([test_set[i][1] for i in picks], device=device)


def completion_figure(run: SampleRun, models: Models, out_dir: Path) -> Path:
    """completion.png: per test image, input (bottom half grey) | completion_samples samples | original."""
    images, labels = test_images(models, run.completion_images, run.checkpoint_vae, "complete")
    rows = completion_rows(models, images, labels, run.completion_samples, run.sampling)
    return save_grid(rows, out_dir / "completion.png", nrow=run.completion_samples + 2)


def edit_request(run: EditRun) -> SampleRun:
    """edit.py's checks that need no weights (the region's source, the files), and the SampleRun it loads with."""
    if (run.mask is None) == (run.box is None):
        raise UserError("pass the region to re-draw: mask=<png> (where it is not black) or box=[x0,y0,x1,y1] (pixels), "
                        "one of the two")
    for path in [*(run.images or []), *([run.mask] if run.mask else [])]:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such image file")
    if run.num_variations < 1 or (run.images is None and run.test_images < 1):
        raise UserError("num_variations and test_images must be positive integers")
    sample = SampleRun(checkpoint_vae=run.checkpoint_vae, checkpoint_gpt=run.checkpoint_gpt, ema=run.ema,
                       sampling=SamplingConfig(**dataclasses.asdict(run.sampling)), device=run.device)
    check_sample_request(sample)
    return sample


def edit_inputs(run: EditRun, models: Models) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The images (B, C, H, W) in [-1, 1], their pixel regions (B, H, W) bool and class labels (B,) (None for an
    unconditional GPT; the null class for a file with no class_label)."""
    t, device = models.tokenizer, next(models.gpt.parameters()).device
    size = (t.image_size, t.image_size)
    labels = None
    if run.images:
        pictures = [Image.open(path) for path in run.images]
        images = to_model_space([p.resize(size, Image.BICUBIC) for p in pictures], t.channels).to(device)
    else:
        images, test_labels = test_images(models, run.test_images, run.checkpoint_vae, "edit")
        labels = test_labels.tolist()
    if run.mask:
        region = mask_region(Image.open(run.mask).resize(size, Image.NEAREST))
    else:
        region = box_region(run.box, t.image_size)
    num_classes = models.gpt.config.num_classes
    if not num_classes:
        return images, region.expand(len(images), -1, -1).to(device), None
    if run.class_label is not None:
        labels = [resolve_class(run.class_label, models.class_names, num_classes)] * len(images)
    elif labels is None:
        labels = [models.gpt.null_class] * len(images)  # a file's class is not known: unconditional
    return images, region.expand(len(images), -1, -1).to(device), torch.tensor(labels, device=device)


def write_edit(run: EditRun, models: Models, out_dir: Path) -> list[Path]:
    """edit.png (per image: input | re-drawn cells grey | variations) and edits/<image>_<j>.png."""
    images, region, labels = edit_inputs(run, models)
    edited, cells = edit_images(models, images, region, labels, run.num_variations, run.sampling)
    paths = [save_grid(edit_rows(images, edited, cells), out_dir / "edit.png", nrow=run.num_variations + 2)]
    (out_dir / "edits").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(to_pil(edited.flatten(0, 1))):
        path = out_dir / "edits" / f"{i // run.num_variations}_{i % run.num_variations}.png"
        row.save(path)
    return [*paths, out_dir / "edits"]


def write_outputs(run: SampleRun, models: Models, out_dir: Path, plan: Plan) -> list[Path]:
    """Every output asked for, into `out_dir` (check_outputs(out_dir, plan) first); returns the paths written."""
    written = [sample_grid(run, models, out_dir, plan)]
    if run.gif:
        written.append(decoding_gif(run, models, out_dir, plan))
    if run.completion:
        written.append(completion_figure(run, models, out_dir))
    return written
