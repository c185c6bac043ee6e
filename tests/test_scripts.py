"""Smoke runs of the scripts as a user types them, and their one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import TINY_TOKENIZER


def test_inspect_data_on_patterns_writes_summary_grid_and_resolved_config(tmp_path, run_script):
    out = run_script("inspect_data.py", "dataset=patterns", "dataset.num_train=40", "batch_size=16",
                     "num_images=16", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_items"] == summary["num_read"] == 40
    assert sum(summary["class_counts"].values()) == 40
    assert -1.0 <= summary["pixel_min"] <= summary["pixel_max"] <= 1.0
    assert (run / "patterns_train.png").stat().st_size > 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset"]["num_train"] == 40 and "${" not in (run / "config.yaml").read_text()


def test_missing_dataset_is_one_line_error_with_exit_2(tmp_path, run_script):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    out = run_script("inspect_data.py", "dataset=cifar10", f"dataset.root={empty}", "dataset.download=false",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "cifar10" in lines[0] and str(empty) in lines[0] and "download" in lines[0]


def test_train_tokenizer_smoke_run_writes_a_loadable_checkpoint_and_eval(tmp_path, run_script):
    from vqgpt.checkpoint import load_checkpoint
    from vqgpt.train.state import load_train_state

    out = run_script("train_tokenizer.py", *TINY_TOKENIZER, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    ckpt = load_checkpoint(run / "checkpoints" / "last", expected_stage="tokenizer")
    assert ckpt.meta["step"] == 4 and ckpt.meta["dataset"] == "patterns"
    assert ckpt.meta["codebook_size"] == 16 and ckpt.meta["latent_grid"] == [8, 8]
    assert ckpt.model.tokenize(torch.zeros(2, 3, 16, 16)).shape == (2, 8, 8)
    assert load_train_state(run / "checkpoints" / "last")["step"] == 4
    results = json.loads((run / "eval.json").read_text())
    assert results["num_images"] == 16 and 0 < results["usage"] <= 1 and results["psnr"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/d_loss" in r for r in rows)  # the discriminator joined at disc_start=2
    assert any("codebook/perplexity" in r for r in rows)
    # trainer.eval_every=2 of 4 steps: validation at step 2 (regression: it was never read), then the final one
    assert [r["step"] for r in rows if "val/psnr" in r] == [2, 4]
    assert sorted(p.name for p in (run / "reconstructions").iterdir()) == ["step_0000002.png", "step_0000004.png"]


def test_train_tokenizer_bad_image_size_is_one_line_error(tmp_path, run_script):
    out = run_script("train_tokenizer.py", *TINY_TOKENIZER, "dataset.image_size=15",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and "divisible" in out.stderr and "\n" not in out.stderr.strip()


def test_train_gpt_smoke_run_builds_the_cache_and_a_loadable_checkpoint(tmp_path, run_script):
    from vqgpt.checkpoint import load_checkpoint

    tok = run_script("train_tokenizer.py", *TINY_TOKENIZER, "trainer.max_steps=2",
                     f"hydra.run.dir={tmp_path / 'tok'}", cwd=tmp_path)
    assert tok.returncode == 0, tok.stderr
    vae = tmp_path / "tok" / "checkpoints" / "last"
    out = run_script("train_gpt.py", f"checkpoint_vae={vae}", "gpt=tiny", "trainer=debug", "trainer.batch_size=4",
                     "sampling.temperature=0.5", "sampling.top_k=4", f"hydra.run.dir={tmp_path / 'gpt'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / ".cache" / "vqgpt" / "tokens").glob("patterns_16_*/header.json"))) == 1
    ckpt = load_checkpoint(tmp_path / "gpt" / "checkpoints" / "last", expected_stage="gpt")
    assert ckpt.meta["vocab_size"] == 16 and ckpt.meta["block_size"] == 64 and ckpt.meta["num_classes"] == 6
    rows = [json.loads(line) for line in (tmp_path / "gpt" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/bits_per_token" in r for r in rows)
    assert (tmp_path / "gpt" / "samples" / "step_0000004.png").exists()
    # sample.py starts from the sampling the GPT was trained with; what the command line sets wins
    assert ckpt.meta["sampling"] == {"temperature": 0.5, "top_k": 4, "top_p": None, "cfg_scale": None, "steps": None,
                                     "schedule": None, "confidence_noise": None, "denoising_steps": None}
    gpt = tmp_path / "gpt" / "checkpoints" / "last"
    drawn = run_script("sample.py", f"checkpoint_vae={vae}", f"checkpoint_gpt={gpt}", "sampling.num_samples=1",
                       "sampling.top_k=8", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    said = drawn.stdout + drawn.stderr
    assert "sampling as it was trained to: sampling.temperature=0.5 (set them to override)" in said
    manifest = json.loads((tmp_path / "s" / "samples.json").read_text())["sampling"]
    assert manifest["temperature"] == 0.5 and manifest["top_k"] == 8
    codes = run_script("extract_codes.py", f"checkpoint_vae={vae}", f"cache_dir={tmp_path / 'codes'}",
                       f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert codes.returncode == 0, codes.stderr
    assert json.loads((tmp_path / "codes" / "header.json").read_text())["splits"] == {"train": 64, "test": 16}


def test_train_gpt_without_a_tokenizer_is_one_line_error(tmp_path, run_script):
    out = run_script("train_gpt.py", f"hydra.run.dir={tmp_path / 'gpt'}", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: checkpoint_vae is not set")


def test_train_gpt_finds_the_demos_tokenizer(tmp_path):
    """Regression: after `make demo` (outputs/demo/tokenizer), train_gpt.py with no checkpoint_vae found nothing: it
    searched outputs/train_tokenizer/ only."""
    from conftest import make_gpt, make_tokenizer

    from vqgpt.errors import UserError
    from vqgpt.train.gpt import newest_tokenizer

    with pytest.raises(UserError, match=f"no tokenizer checkpoint under {tmp_path / 'outputs'}/"):
        newest_tokenizer(tmp_path / "outputs")
    make_tokenizer(tmp_path / "outputs" / "demo" / "tokenizer" / "checkpoints" / "last")
    make_gpt(tmp_path / "outputs" / "demo" / "gpt" / "checkpoints" / "last")  # newer, but not a tokenizer
    assert newest_tokenizer(tmp_path / "outputs") == str(tmp_path / "outputs" / "demo" / "tokenizer" / "checkpoints"
                                                          / "last")
