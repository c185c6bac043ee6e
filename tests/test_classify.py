"""classify.py: Image GPT's linear probe and fine-tuning, on a tiny pixel-palette GPT of 8x8 patterns."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_run, one_error_line

from vqgpt.checkpoint import load_checkpoint
from vqgpt.config import ClassifyRun, GPTConfig, ProbeConfig, TrainerConfig, TrainGPTRun
from vqgpt.errors import UserError
from vqgpt.models.gpt_classifier import GPTClassifier
from vqgpt.train.gpt import train_gpt
from vqgpt.train.gpt_classifier import classify, fit_linear
from vqgpt.train.tokenizer import train_tokenizer

TRAINER = dict(batch_size=8, warmup_steps=1, device="cpu", num_workers=0, log_every=1, eval_every=100,
               sample_every=100, checkpoint_every=100, progress_bar=False)


@pytest.fixture(scope="module")
def pixel_gpt(tmp_path_factory):
    """A pixel-palette tokenizer (8 greys, 8x8 patterns, 6 classes) and a 2-step unconditional GPT on it."""
    root = tmp_path_factory.mktemp("classify")
    run = compose_run("train_tokenizer", "dataset=patterns", "dataset.image_size=8", "dataset.channels=1",
                      "dataset.num_train=96", "dataset.num_test=24", "tokenizer=pixel", "tokenizer.num_colors=8",
                      "trainer.device=cpu", "trainer.num_workers=0")
    train_tokenizer(run, root / "tok", {})
    gpt = TrainGPTRun(checkpoint_vae=str(root / "tok" / "checkpoints" / "last"),
                      gpt=GPTConfig(n_layer=2, n_head=2, n_embd=16, num_classes=0),
                      trainer=TrainerConfig(max_steps=2, **TRAINER), cache_dir=str(root / "cache"))
    train_gpt(gpt, root / "gpt", {})
    return root


def test_fit_linear_separates_separable_data_and_takes_raw_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 5, generator=g) * 0.1 + 100.0  # far from the origin: standardisation matters
    x[:, 0] += y * 1.0
    linear = fit_linear(x, y, 3, weight_decay=1e-4, max_iter=200)
    assert (linear(x).argmax(1) == y).float().mean() == 1.0


def test_probe_reports_every_block_and_picks_one_on_held_out_images(pixel_gpt, tmp_path):
    gpt, cache = pixel_gpt / "gpt" / "checkpoints" / "last", pixel_gpt / "cache"
    run = ClassifyRun(checkpoint_gpt=str(gpt), cache_dir=str(cache),
                      probe=ProbeConfig(train_images=60, max_iter=50), trainer=TrainerConfig(device="cpu"))
    results = classify(run, tmp_path, {})
    assert set(results["layers"]) == {"0", "1", "2"} and results["train_images"] == 60
    assert results["test_images"] == 24
    best = results["layer"]
    held_out = {int(k): v["val_accuracy"] for k, v in results["layers"].items()}
    assert held_out[best] == max(held_out.values())
    assert results["test_accuracy"] == results["layers"][str(best)]["test_accuracy"]
    assert results["test_accuracy"] > 1 / 6  # above chance on 6 easy classes, even with a 2-step GPT
    assert json.loads((tmp_path / "eval.json").read_text())["test_accuracy"] == results["test_accuracy"]


def test_finetune_starts_from_the_gpt_and_saves_a_classifier(pixel_gpt, tmp_path):
    gpt, cache = pixel_gpt / "gpt" / "checkpoints" / "last", pixel_gpt / "cache"
    run = ClassifyRun(checkpoint_gpt=str(gpt), cache_dir=str(cache),
                      mode="finetune", trainer=TrainerConfig(max_steps=3, lr=1e-3, **TRAINER))
    results = classify(run, tmp_path, {})
    assert results["mode"] == "finetune" and results["test_images"] == 24
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last", expected_stage="gpt_classifier")
    assert isinstance(ckpt.model, GPTClassifier) and ckpt.model.config.num_classes == 6
    pretrained = load_checkpoint(pixel_gpt / "gpt" / "checkpoints" / "last").model
    fresh = GPTClassifier(ckpt.model.config)
    fresh.gpt.load_state_dict(pretrained.state_dict())
    tokens = torch.randint(0, 8, (2, 64))
    logits, gen = fresh(tokens)
    assert torch.equal(logits, torch.zeros(2, 6))  # a zero head: fine-tuning starts from the GPT itself
    assert torch.allclose(gen, pretrained(tokens, targets=tokens)[1])
    assert not torch.equal(ckpt.model.gpt.transformer.wte.weight, pretrained.transformer.wte.weight)  # all trained


def test_bad_requests_get_one_line(pixel_gpt, tmp_path, run_script):
    gpt = pixel_gpt / "gpt" / "checkpoints" / "last"
    with pytest.raises(UserError, match="probe.layers=\\[5\\]: this GPT has blocks 0 \\(the embeddings\\) to 2"):
        classify(ClassifyRun(checkpoint_gpt=str(gpt), cache_dir=str(pixel_gpt / "cache"),
                             probe=ProbeConfig(layers=[5]), trainer=TrainerConfig(device="cpu")), tmp_path, {})
    with pytest.raises(UserError, match="gen_weight=-1.0 must be >= 0"):
        classify(ClassifyRun(checkpoint_gpt=str(gpt), mode="finetune", gen_weight=-1.0), tmp_path, {})
    out = run_script("classify.py", f"checkpoint_gpt={gpt}", "mode=linear", cwd=tmp_path)
    assert "mode='linear' is not one of probe, finetune" in one_error_line(out)


def test_the_held_out_part_is_random_and_stratified_by_class():
    """Regression: the held-out part was the first 10 % in dataset order: one class on class-sorted data."""
    from vqgpt.data.datasets import stratified_split

    labels = torch.arange(3).repeat_interleave(20)  # class-sorted, as a folder dataset is
    held, rest = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[held]).tolist() == [2, 2, 2]
    assert sorted(torch.cat([held, rest]).tolist()) == list(range(60))
    assert torch.equal(held, stratified_split(labels, 0.1, seed=0)[0])
    assert not torch.equal(held, stratified_split(labels, 0.1, seed=1)[0])


def test_a_gpt_trained_with_hflip_copies_is_probed_and_evaluated_on_its_own_cache(pixel_gpt, tmp_path, monkeypatch):
    """Regression: evaluate.py and classify.py always asked for hflip_copies=False, so a named cache of such a
    GPT was refused and the default one was rebuilt."""
    import vqgpt.train.gpt_classifier as probe_module
    from vqgpt.config import EvaluateRun
    from vqgpt.eval.evaluate import token_metrics
    from vqgpt.generate.pipeline import load_models

    vae = str(pixel_gpt / "tok" / "checkpoints" / "last")
    flipped = TrainGPTRun(checkpoint_vae=vae, gpt=GPTConfig(n_layer=1, n_head=2, n_embd=16, num_classes=0),
                          trainer=TrainerConfig(max_steps=1, **TRAINER), cache_dir=str(tmp_path / "flip_cache"),
                          hflip_copies=True)
    train_gpt(flipped, tmp_path / "gpt", {})
    gpt = tmp_path / "gpt" / "checkpoints" / "last"
    assert load_checkpoint(gpt).meta["hflip_copies"] is True
    built = []
    monkeypatch.setattr("vqgpt.data.token_cache.build_token_cache", lambda *a, **k: built.append(a))
    run = ClassifyRun(checkpoint_gpt=str(gpt), cache_dir=str(tmp_path / "flip_cache"),
                      probe=ProbeConfig(max_iter=5), trainer=TrainerConfig(device="cpu"))
    results = probe_module.classify(run, tmp_path, {})
    assert results["train_images"] == 96  # the originals, not their flipped copies too
    from vqgpt.config import SampleRun

    models = load_models(SampleRun(checkpoint_vae=vae, checkpoint_gpt=str(gpt)), torch.device("cpu"))
    scores = token_metrics(EvaluateRun(checkpoint_vae=vae, checkpoint_gpt=str(gpt),
                                       cache_dir=str(tmp_path / "flip_cache")), models, torch.device("cpu"))
    assert scores["bits_per_dim"] > 0 and built == []  # the named cache was opened, nothing rebuilt
