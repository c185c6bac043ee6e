"""The Tokenizer interface: a trivial test double (2-level thresholding, one token per pixel) runs the whole GPT
stage, the token cache and sampling (grid, GIF, completion) end to end; and the GPT stage's regressions."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from vqgpt.checkpoint import load_checkpoint, save_checkpoint
from vqgpt.config import (
    CONFIG_DIR,
    DatasetConfig,
    GPTConfig,
    SampleRun,
    SamplingConfig,
    TrainerConfig,
    TrainGPTRun,
)
from vqgpt.data import dataset_info
from vqgpt.generate import pipeline, writer
from vqgpt.registry import register_model
from vqgpt.tokenizers import Tokenizer
from vqgpt.train.gpt import train_gpt

DATA = DatasetConfig(name="patterns", image_size=6, channels=1, num_classes=6, num_train=32, num_test=8)


@dataclass
class ThresholdConfig:
    name: str = "threshold"
    in_channels: int = 1
    image_size: int = 6


@register_model("test_threshold", ThresholdConfig)
class ThresholdTokenizer(Tokenizer):
    """Each pixel is one token: 1 where it is brighter than mid-grey, else 0 (a 2-colour palette)."""

    def __init__(self, config: ThresholdConfig):
        super().__init__()
        self.config = config
        self.register_buffer("levels", torch.tensor([-1.0, 1.0]))  # the palette, and where the device is

    @property
    def latent_grid(self) -> tuple[int, int]:
        return self.config.image_size, self.config.image_size

    @property
    def codebook_size(self) -> int:
        return 2

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.mean(dim=1) > 0).long()  # (B, H, W)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens.reshape(-1, *self.latent_grid)
        return self.levels[grid][:, None].expand(-1, self.config.in_channels, -1, -1)  # (B, C, H, W)


def save_threshold(path: Path, data: DatasetConfig = DATA) -> ThresholdTokenizer:
    model = ThresholdTokenizer(ThresholdConfig(in_channels=data.channels, image_size=data.image_size))
    meta = {**dataset_info(data), **model.checkpoint_meta(), "data_config": dataclasses.asdict(data)}
    save_checkpoint(path, model, stage="tokenizer", arch="test_threshold", meta=meta, step=0)
    return model


def tiny_run(vae: Path, **gpt) -> TrainGPTRun:
    trainer = TrainerConfig(max_steps=4, batch_size=8, warmup_steps=1, device="cpu", num_workers=0, log_every=1,
                            eval_every=2, sample_every=4, checkpoint_every=2, progress_bar=False)
    return TrainGPTRun(checkpoint_vae=str(vae), gpt=GPTConfig(n_layer=1, n_head=2, n_embd=16, **gpt),
                       trainer=trainer)


def test_the_gpt_stage_and_sampling_run_through_the_interface_alone(tmp_path):
    save_threshold(tmp_path / "tok")
    results = train_gpt(tiny_run(tmp_path / "tok"), tmp_path / "gpt", {})
    assert results["loss"] > 0
    gpt = load_checkpoint(tmp_path / "gpt" / "checkpoints" / "last", expected_stage="gpt")
    assert gpt.meta["vocab_size"] == 2 and gpt.meta["block_size"] == 36 and gpt.meta["num_classes"] == 6
    grid = Image.open(tmp_path / "gpt" / "samples" / "step_0000004.png")
    assert grid.size == (8 * 8 + 2, 6 * 8 + 2)  # 8 per class, one row each

    run = SampleRun(checkpoint_vae=str(tmp_path / "tok"), checkpoint_gpt=str(tmp_path / "gpt/checkpoints/last"),
                    sampling=SamplingConfig(num_samples=2), gif=True, completion=True, completion_images=2,
                    completion_samples=2, device="cpu")
    models = pipeline.load_models(run, torch.device("cpu"))
    assert isinstance(models.tokenizer, ThresholdTokenizer)
    out = tmp_path / "samples"
    out.mkdir()
    written = writer.write_outputs(run, models, out, writer.plan_outputs(run, models))
    assert [p.name for p in written] == ["samples.png", "decoding.gif", "completion.png"]
    assert len(list((out / "images").iterdir())) == 12
    assert Image.open(out / "decoding.gif").n_frames == 6  # one frame per row of the 6x6 grid
    images = pipeline.sample_images(models, torch.arange(3), 3, run.sampling, batch_size=2)
    assert images.shape == (3, 1, 6, 6) and set(images.unique().tolist()) <= {-1.0, 1.0}


def test_completion_keeps_the_prefix_pixels_of_a_one_token_per_pixel_tokenizer(tmp_path):
    tokenizer = save_threshold(tmp_path / "tok")
    train_gpt(tiny_run(tmp_path / "tok"), tmp_path / "gpt", {})
    gpt = load_checkpoint(tmp_path / "gpt" / "checkpoints" / "last").model
    models = pipeline.Models(tokenizer, gpt, None, dataclasses.asdict(DATA))
    images = torch.rand(2, 1, 6, 6) * 2 - 1
    real, samples = pipeline.complete(models, images, torch.tensor([0, 3]), 3, SamplingConfig())
    assert samples.shape == (2, 3, 6, 6)
    assert torch.equal(samples[:, :, :3], real[:, None, :3].expand(-1, 3, -1, -1))


def test_num_classes_zero_trains_an_unconditional_gpt_on_labelled_data(tmp_path):
    """Regression: gpt.num_classes=0 silently became the dataset's class count (`num_classes or ...`)."""
    save_threshold(tmp_path / "tok")
    train_gpt(tiny_run(tmp_path / "tok", num_classes=0), tmp_path / "gpt", {})
    assert load_checkpoint(tmp_path / "gpt" / "checkpoints" / "last").model.config.num_classes == 0
    train_gpt(tiny_run(tmp_path / "tok"), tmp_path / "cond", {})  # null: from the data
    assert load_checkpoint(tmp_path / "cond" / "checkpoints" / "last").model.config.num_classes == 6


def test_mid_training_sample_grids_are_generated_in_batches(tmp_path, monkeypatch):
    """Regression: the grid generated 8 x num_classes sequences at once (8,000 KV caches on ImageNet)."""
    save_threshold(tmp_path / "tok")
    sizes = []
    real = pipeline.generate

    def spy(model, num_samples, *args, **kwargs):
        sizes.append(num_samples)
        return real(model, num_samples, *args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", spy)
    train_gpt(tiny_run(tmp_path / "tok"), tmp_path / "gpt", {})  # trainer.batch_size=8, 6 classes x 8
    assert sizes == [8] * 6


def test_one_final_evaluation_and_train_loss_is_the_steps_mean(tmp_path, monkeypatch):
    """Regressions: the test split was evaluated twice at the end; train/loss was the last micro-batch's."""
    import vqgpt.train.gpt as stage

    save_threshold(tmp_path / "tok")
    calls = []
    real = stage.test_loss
    monkeypatch.setattr(stage, "test_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = tiny_run(tmp_path / "tok")
    run.trainer.grad_accum = 3
    losses = []
    model_forward = stage.GPT.forward

    def record(self, *args, **kwargs):
        logits, loss = model_forward(self, *args, **kwargs)
        if self.training:
            losses.append(loss.item())
        return logits, loss

    monkeypatch.setattr(stage.GPT, "forward", record)
    train_gpt(run, tmp_path / "gpt", {})
    assert len(calls) == 2  # eval_every=2 of 4 steps: step 2, then the final one (not step 4 and again)
    rows = [json.loads(line) for line in (tmp_path / "gpt" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(logged) == 4 and len(losses) == 12
    for step, value in enumerate(logged):
        assert value == pytest.approx(sum(losses[3 * step:3 * step + 3]) / 3, rel=1e-5)


def test_a_new_tokenizer_kind_is_its_dataclass_its_class_and_a_yaml(tmp_path, monkeypatch):
    """Regression: a new kind touched five registration points; now its config dataclass is collected by name,
    its class registers itself, and train_tokenizer.py finds both (a `fit` tokenizer is fitted directly)."""
    from hydra import compose, initialize_config_dir

    from vqgpt import config
    from vqgpt.config import TokenizerConfig, register_configs, to_object
    from vqgpt.train.tokenizer import train_tokenizer

    monkeypatch.setattr(config, "TOKENIZER_CONFIGS", dict(config.TOKENIZER_CONFIGS))  # undone after the test

    @dataclasses.dataclass
    class SignConfig(TokenizerConfig):
        name: str = "sign_test"

    assert config.TOKENIZER_CONFIGS["sign_test"] is SignConfig

    @register_model("sign_test", SignConfig)
    class SignTokenizer(ThresholdTokenizer):  # 2 levels, fitted by nothing
        def __init__(self, cfg: SignConfig):
            super().__init__(ThresholdConfig(in_channels=cfg.in_channels, image_size=cfg.image_size))
            self.config = cfg

        def fit(self, dataset, seed: int) -> str:
            return "sign: nothing to fit"

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "tokenizer" / "sign_test.yaml").write_text(
        "defaults:\n  - sign_test_schema\n  - _self_\n\nin_channels: ${dataset.channels}\n"
        "image_size: ${dataset.image_size}\n")
    register_configs()
    with initialize_config_dir(str(configs), version_base="1.3"):
        run = to_object(compose("train_tokenizer", overrides=[
            "tokenizer=sign_test", "dataset=patterns", "dataset.image_size=8", "dataset.channels=1",
            "dataset.num_train=8", "dataset.num_test=4", "trainer.device=cpu", "trainer.num_workers=0"]))
    assert isinstance(run.tokenizer, SignConfig)
    results = train_tokenizer(run, tmp_path / "run", {})
    assert results["num_images"] == 4 and (tmp_path / "run" / "checkpoints" / "last" / "config.json").is_file()
