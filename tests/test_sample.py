"""The sampling pipeline (vqgpt.generate.pipeline) and scripts/sample.py, train_classifier.py: outputs,
completion prefix, rejection choice, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import PATTERNS as DATA
from conftest import one_error_line
from PIL import Image
from torch import nn

from vqgpt.checkpoint import load_checkpoint
from vqgpt.config import SampleRun
from vqgpt.data import build_dataset
from vqgpt.generate import pipeline, writer
from vqgpt.models.image_classifier import best_of, class_scores


def written(run_dir: Path) -> list[str]:
    """What sample.py wrote to its run dir, besides Hydra's own .hydra/ and log."""
    return [p.name for p in run_dir.glob("*") if p.name != ".hydra" and p.suffix != ".log"]


def test_sample_writes_grid_images_gif_and_completion(tiny_ckpts, tmp_path, run_script):
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt'}",
                     "sampling.num_samples=2", "sampling.top_k=8", "gif=true", "completion=true",
                     "completion_images=3", "completion_samples=2", "device=cpu", f"hydra.run.dir={tmp_path}",
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # 6 classes x 2 samples of 8 px with 2 px padding: one row per class.
    assert Image.open(tmp_path / "samples.png").size == (2 * 10 + 2, 6 * 10 + 2)
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(files) == 12 and "checkerboard_0.png" in files and "square_1.png" in files
    assert all(Image.open(tmp_path / "images" / f).size == (8, 8) for f in files)
    gif = Image.open(tmp_path / "decoding.gif")
    assert gif.n_frames == 4  # one frame per row of the 4x4 token grid
    assert Image.open(tmp_path / "completion.png").size == ((2 + 2) * 10 + 2, 3 * 10 + 2)
    assert (tmp_path / "config.yaml").is_file()


def test_completion_keeps_the_real_top_half(tiny_ckpts):
    tokenizer = load_checkpoint(tiny_ckpts / "tok").model
    gpt = load_checkpoint(tiny_ckpts / "gpt").model
    models = pipeline.Models(tokenizer, gpt, DATA.class_names, dataclasses.asdict(DATA))
    data = build_dataset(DATA, "test", train=False)
    images = torch.stack([data[i][0] for i in range(3)])
    labels = torch.tensor([data[i][1] for i in range(3)])
    real, samples = pipeline.complete(models, images, labels, 2, SampleRun().sampling)
    assert torch.equal(real, tokenizer.tokenize(images)) and samples.shape == (3, 2, 4, 4)
    assert torch.equal(samples[:, :, :2], real[:, None, :2].expand(-1, 2, -1, -1))  # top half kept exactly
    assert pipeline.completion_prefix(real).shape == (3, 8)


class MeanClassifier(nn.Module):
    """Fake: class 0 likes bright images, class 1 dark ones."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([mean, -mean], dim=1) * 10


def test_rejection_keeps_the_candidate_the_classifier_scores_highest():
    brightness = torch.tensor([[0.1, 0.9, -0.5], [0.3, -0.8, 0.2]])  # (B=2, N=3)
    candidates = brightness[..., None, None, None].expand(2, 3, 1, 2, 2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])  # image 0 wants class 0, image 1 class 1
    scores = class_scores(MeanClassifier(), candidates.flatten(0, 1), labels).view(2, 3)
    best = best_of(candidates, scores)
    assert best.shape == (2, 1, 2, 2)
    assert best[0].mean().item() == pytest.approx(0.9) and best[1].mean().item() == pytest.approx(-0.8)
    unconditional = class_scores(MeanClassifier(), candidates.flatten(0, 1), None).view(2, 3)
    assert best_of(candidates, unconditional)[1].mean().item() == pytest.approx(-0.8)  # most confident


def test_image_names_are_per_class_and_file_safe():
    assert writer.image_names([0, 0, 1], 3, ["T-shirt/top", "Bag"]) == ["T-shirt_top_0.png",
                                                                               "T-shirt_top_1.png", "Bag_0.png"]
    assert writer.image_names(None, 2, None) == ["sample_0.png", "sample_1.png"]


def test_mismatched_pair_is_one_line_naming_vocab_and_block(tiny_ckpts, tmp_path, run_script):
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt_other'}",
                     "device=cpu", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = one_error_line(out)
    assert "vocab_size=16" in line and "K=32" in line and "block_size=9" in line and "4x4" in line
    assert not written(tmp_path / "run")


def test_invalid_temperature_is_one_line_and_writes_nothing(tiny_ckpts, tmp_path, run_script):
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt'}",
                     "sampling.temperature=0", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "sampling.temperature=0" in one_error_line(out)
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run dir (no .hydra/, no sample.log)
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt'}",
                     "sampling.class_label=dragon", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "unknown class 'dragon'" in one_error_line(out) and not (tmp_path / "run").exists()


def test_train_classifier_then_rejection_sampling_by_class_name(tiny_ckpts, tmp_path, run_script):
    out = run_script("train_classifier.py", "dataset=patterns", "dataset.image_size=8", "dataset.num_train=64",
                     "dataset.num_test=16", "classifier.channels=[8,8]", "trainer=debug",
                     f"hydra.run.dir={tmp_path / 'clf'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "test split: accuracy" in out.stdout
    ckpt = load_checkpoint(tmp_path / "clf" / "checkpoints" / "last", expected_stage="classifier")
    assert ckpt.meta["num_classes"] == 6 and ckpt.meta["image_size"] == 8 and ckpt.meta["channels"] == 3
    assert ckpt.model(torch.zeros(2, 3, 8, 8)).shape == (2, 6)

    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt'}",
                     f"checkpoint_classifier={tmp_path / 'clf' / 'checkpoints' / 'last'}", "sampling.accept_n=3",
                     "sampling.class_label=circle", "sampling.num_samples=2", "sampling.cfg_scale=2", "device=cpu",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "best of 3" in out.stdout
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["circle_0.png", "circle_1.png"]


def _sample_run(ckpts: Path, **sampling) -> SampleRun:
    run = SampleRun(checkpoint_vae=str(ckpts / "tok"), checkpoint_gpt=str(ckpts / "gpt"), device="cpu",
                    batch_size=4)
    run.sampling = dataclasses.replace(run.sampling, **sampling)
    return run


def _models(run: SampleRun) -> pipeline.Models:
    return pipeline.load_models(run, torch.device("cpu"))


def _pixels(folder: Path) -> dict[str, bytes]:
    return {p.name: Image.open(p).tobytes() for p in sorted(folder.glob("*.png"))}


def test_sampling_resumes_a_stopped_run_with_the_same_images(tiny_ckpts, tmp_path, monkeypatch):
    run = _sample_run(tiny_ckpts, num_samples=3)  # 6 classes x 3 = 18 images in batches of 4
    models = _models(run)
    for name in ("whole", "part"):
        (tmp_path / name).mkdir()
    plan = writer.plan_outputs(run, models)
    writer.sample_grid(run, models, tmp_path / "whole", plan)
    whole = _pixels(tmp_path / "whole" / "images")
    assert len(whole) == 18

    drawn = []
    real_sample_images = writer.sample_images

    def stop_after_two_batches(models, cond, num, s, batch_size):
        if len(drawn) == 2:
            raise KeyboardInterrupt
        drawn.append(s.seed)
        return real_sample_images(models, cond, num, s, batch_size)

    monkeypatch.setattr(writer, "sample_images", stop_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        writer.sample_grid(run, models, tmp_path / "part", plan)
    assert len(_pixels(tmp_path / "part" / "images")) == 8  # two whole batches, nothing half-written
    assert not list((tmp_path / "part" / "images").glob("*.part"))
    (tmp_path / "part" / "images" / sorted(whole)[0]).unlink()  # and one image lost

    calls = []
    monkeypatch.setattr(writer, "sample_images", lambda *a: calls.append(a) or real_sample_images(*a))
    writer.sample_grid(run, models, tmp_path / "part", plan)
    assert len(calls) == 4  # of the 5 batches, the whole second one was skipped
    assert _pixels(tmp_path / "part" / "images") == whole
    assert Image.open(tmp_path / "part" / "samples.png").tobytes() == \
        Image.open(tmp_path / "whole" / "samples.png").tobytes()


def test_resuming_with_other_settings_is_refused(tiny_ckpts, tmp_path):
    run = _sample_run(tiny_ckpts, num_samples=1)
    models = _models(run)
    writer.sample_grid(run, models, tmp_path, writer.plan_outputs(run, models))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    other = _sample_run(tiny_ckpts, num_samples=1, top_k=4)
    with pytest.raises(writer.UserError, match="differs in: sampling"):  # what sample.py asks before writing
        writer.check_outputs(tmp_path, writer.plan_outputs(other, _models(other)))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_one_class_gets_a_square_grid(tiny_ckpts, tmp_path):
    run = _sample_run(tiny_ckpts, num_samples=9, class_label="checkerboard")
    models = _models(run)
    writer.sample_grid(run, models, tmp_path, writer.plan_outputs(run, models))
    assert Image.open(tmp_path / "samples.png").size == (3 * 10 + 2, 3 * 10 + 2)  # not a 1x9 strip


@pytest.mark.parametrize("accept_n", [None, 3, 8])
def test_image_batches_cover_every_image_once_and_never_share_a_seed(accept_n):
    s = SampleRun().sampling
    s = dataclasses.replace(s, accept_n=accept_n, seed=5)
    batches = pipeline.image_batches(23, s, batch_size=6)
    assert [j for index, _ in batches for j in index] == list(range(23))
    per_image = accept_n or 1
    seeds = []
    for index, settings in batches:  # sample_tokens draws chunk k of a batch from settings.seed + k
        chunks = -(-len(index) * per_image // 6)
        seeds += [settings.seed + k for k in range(chunks)]
    assert len(seeds) == len(set(seeds)) and min(seeds) == 5


def test_cond_means_one_thing_everywhere(tiny_ckpts):
    """Regression: generate took an int but sample_images neither an int nor tensor([3]); cond=None on a
    class-conditional GPT drew the null class silently."""
    models = pipeline.Models(load_checkpoint(tiny_ckpts / "tok").model, load_checkpoint(tiny_ckpts / "gpt").model,
                             DATA.class_names, dataclasses.asdict(DATA))
    s = SampleRun().sampling
    by_index = pipeline.sample_images(models, torch.tensor([4, 4]), 2, s, batch_size=4)
    for cond in (4, torch.tensor(4), [4, 4], "circle", ["Circle", 4]):
        assert torch.equal(pipeline.sample_images(models, cond, 2, s, batch_size=4), by_index), cond
    with pytest.raises(ValueError, match="this GPT is class-conditional"):
        pipeline.sample_images(models, None, 2, s, batch_size=4)
    unconditional = pipeline.sample_images(models, models.gpt.null_class, 2, s, batch_size=4)
    assert unconditional.shape == by_index.shape


def test_recorded_sampling_fills_what_the_command_line_left_and_an_old_checkpoint_changes_nothing(tiny_ckpts,
                                                                                                   tmp_path):
    import json
    import shutil

    from vqgpt.config import SamplingOptions

    asked = SamplingOptions(temperature=1.0, top_k=8)
    assert pipeline.with_recorded_sampling(asked, str(tiny_ckpts / "gpt"), set()) == asked  # records none
    recorded = tmp_path / "gpt"
    shutil.copytree(tiny_ckpts / "gpt", recorded)
    meta = json.loads((recorded / "config.json").read_text())
    meta["sampling"] = {"temperature": 0.7, "top_k": 4, "top_p": 0.9, "cfg_scale": None, "seed": 5}
    (recorded / "config.json").write_text(json.dumps(meta))
    got = pipeline.with_recorded_sampling(asked, str(recorded), {"top_k"})
    assert got == SamplingOptions(temperature=0.7, top_k=8, top_p=0.9)  # the seed is not a recorded option
