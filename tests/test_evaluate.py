"""scripts/evaluate.py on tiny checkpoints (both stages, a cfg sweep, errors) and FID-N during GPT training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import PATTERNS, load_benchmark, make_tokenizer, one_error_line
from PIL import Image

from vqgpt.checkpoint import save_checkpoint
from vqgpt.config import (
    ClassifierConfig,
    EvaluateFIDConfig,
    EvaluateRun,
    FIDConfig,
    GPTConfig,
    TrainerConfig,
    TrainGPTRun,
)
from vqgpt.data import dataset_info
from vqgpt.errors import UserError
from vqgpt.eval.evaluate import balanced_labels, check_run, describe_balance
from vqgpt.models.image_classifier import Classifier
from vqgpt.train.engine import Engine
from vqgpt.train.gpt import GPTTask

SMALL_FID = ("fid.reference_size=4", "fid.batch_size=4")


def test_gpt_stage_sweeps_cfg_scales_into_one_json_with_the_protocol(tiny_ckpts, run_script, tmp_path):
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(in_channels=3, image_size=8, num_classes=6, channels=[8]))
    save_checkpoint(tmp_path / "clf", classifier, stage="classifier", arch="classifier", meta=dataset_info(PATTERNS),
                    step=0)
    out = run_script("evaluate.py", "stage=gpt", f"checkpoint_vae={tiny_ckpts / 'tok'}",
                     f"checkpoint_gpt={tiny_ckpts / 'gpt'}", "fid.num_samples=6", "cfg_scales=[1,2]",
                     f"checkpoint_classifier={tmp_path / 'clf'}", "fid.inception_score=false", *SMALL_FID,
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["stage"] == "gpt" and results["bits_per_dim"] > 0
    # bits/dim: the token stream's bits per sub-pixel: 16 tokens for 3x8x8 values
    assert abs(results["bits_per_dim"] - results["bits_per_token"] * 16 / (3 * 8 * 8)) < 1e-9
    assert [row["cfg_scale"] for row in results["samples"]] == [1.0, 2.0]
    for row in results["samples"]:
        assert row["protocol"]["num_samples"] == 6 and row["protocol"]["reference_size"] == 4
        assert row["protocol"]["class_balance"] == "balanced: 1 per class (6 classes)"
        assert row["fid"] > 0 and row["fid_noise_floor_size"] == 2
        # the classifier's verdict on each class's one sample: per class 0 or 1, their mean overall
        assert len(row["per_class_accuracy"]) == 6 and set(row["per_class_accuracy"]) <= {0.0, 1.0}
        assert row["class_accuracy"] == pytest.approx(sum(row["per_class_accuracy"]) / 6, abs=1e-6)
    assert "FID protocol: implementation: torchmetrics" in out.stdout and "cfg_scale" in out.stdout


def test_tokenizer_stage_reports_rfid_with_the_reconstruction_metrics(tiny_ckpts, run_script, tmp_path):
    out = run_script("evaluate.py", "stage=tokenizer", f"checkpoint_vae={tiny_ckpts / 'tok'}", *SMALL_FID,
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["num_images"] == 4 == results["protocol"]["num_samples"]  # the reference's own images
    assert {"rfid", "psnr", "ssim", "usage", "perplexity"} <= set(results) and results["lpips"] is None  # 8 px
    assert "reconstructions" in results["protocol"]["class_balance"]


def test_bad_evaluate_options_are_one_line_and_write_no_results(tiny_ckpts, run_script, tmp_path):
    out = run_script("evaluate.py", "stage=gpt", f"checkpoint_vae={tiny_ckpts / 'tok'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode != 0 and "stage=gpt needs checkpoint_gpt=" in one_error_line(out)
    assert not (tmp_path / "run" / "eval.json").exists()
    vae = str(tiny_ckpts / "tok")
    for run, message in ((EvaluateRun(stage="decoder", checkpoint_vae=vae), "stage=decoder is not one of"),
                         (EvaluateRun(stage="tokenizer"), "checkpoint_vae is not set"),
                         (EvaluateRun(checkpoint_vae=vae, checkpoint_gpt=vae, fid=EvaluateFIDConfig(num_samples=1)),
                          "at least 2 images"),
                         (EvaluateRun(stage="tokenizer", checkpoint_vae=vae,
                                      fid=EvaluateFIDConfig(reference_split="holdout")), "must be one of train, val,")):
        with pytest.raises(UserError, match=message):
            check_run(run)


def test_labels_are_balanced_and_the_balance_is_described():
    labels = balanced_labels(7, 3)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert describe_balance(labels, None) == "balanced: 2-3 per class (3 classes)"
    assert describe_balance(balanced_labels(4, 3, label=1), ["a", "b", "c"]) == "one class: b"
    assert balanced_labels(4, 0) is None and describe_balance(None, None) == "unconditional"


def test_gpt_training_logs_fid_n_through_the_same_code(tmp_path):
    vae = tmp_path / "tok"
    make_tokenizer(vae)
    trainer = TrainerConfig(max_steps=2, batch_size=4, warmup_steps=1, device="cpu", num_workers=0, log_every=1,
                            eval_every=100, sample_every=100, checkpoint_every=100, progress_bar=False)
    run = TrainGPTRun(checkpoint_vae=str(vae), trainer=trainer, gpt=GPTConfig(n_layer=1, n_head=2, n_embd=16),
                      fid_samples=6, fid=dataclasses.replace(FIDConfig(), reference_size=4, batch_size=4,
                                                              inception_score=False))
    engine = Engine(run.trainer, tmp_path / "run", {}, run.logger, resume=None)
    with torch.random.fork_rng(devices=[]):
        results = engine.fit(GPTTask(run, engine))
    assert results["fid"] > 0 and results["fid_protocol"]["num_samples"] == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/fid" in row for row in rows) and not any("val/fid_protocol" in row for row in rows)
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["fid_protocol"]["reference_size"] == 4


def test_fid_every_keeps_fid_n_to_its_steps_and_the_end(tmp_path):
    """fid_every: FID-N at the evaluations on its multiples and the last one, not at every evaluation; a value
    that no evaluation falls on is refused before anything is built."""
    vae = tmp_path / "tok"
    make_tokenizer(vae)
    trainer = TrainerConfig(max_steps=3, batch_size=4, warmup_steps=1, device="cpu", num_workers=0, log_every=1,
                            eval_every=1, sample_every=100, checkpoint_every=100, progress_bar=False)
    run = TrainGPTRun(checkpoint_vae=str(vae), trainer=trainer, gpt=GPTConfig(n_layer=1, n_head=2, n_embd=16),
                      fid_samples=4, fid_every=2, fid=dataclasses.replace(FIDConfig(), reference_size=4,
                                                                          batch_size=4, inception_score=False))
    engine = Engine(run.trainer, tmp_path / "run", {}, run.logger, resume=None)
    with torch.random.fork_rng(devices=[]):
        engine.fit(GPTTask(run, engine))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(row["step"] for row in rows if "val/fid" in row) == [2, 3]
    assert sorted(row["step"] for row in rows if "val/loss" in row) == [1, 2, 3]
    bad = dataclasses.replace(run, fid_every=3, trainer=dataclasses.replace(trainer, eval_every=2))
    with pytest.raises(UserError, match=r"fid_every=3: .* multiple of trainer.eval_every=2"):
        GPTTask(bad, Engine(bad.trainer, tmp_path / "bad", {}, bad.logger, resume=None))


def test_the_frontier_table_letters_fids_by_protocol_and_plots_them(tmp_path):
    frontier_table = load_benchmark("frontier_table")
    record = {"implementation": "torchmetrics 1", "weights": "w", "weights_sha256": "a" * 64, "resize": "r",
              "input": "i", "reference": "fashionmnist test split", "reference_size": 10000, "num_samples": 10000,
              "class_balance": "the test split's own", "stats_dtype": "float64"}
    gpt_record = {**record, "class_balance": "balanced: 1000 per class (10 classes)"}
    budgets = (("1h", 2.0, 6.0, 60), ("1h_kl", 1.5, 9.0, 60), ("20min", 3.0, 8.0, 10), ("unfinished", 1.0, 1.0, 1))
    for budget, rfid, fid, minutes in budgets:
        run = tmp_path / budget
        (run / "eval_tokenizer").mkdir(parents=True)
        codebook = {} if budget == "1h_kl" else {"usage": 1.0, "perplexity": 200.0}  # a KL tokenizer has none
        (run / "eval_tokenizer" / "eval.json").write_text(json.dumps(
            {"rfid": rfid, "psnr": 24.0, "ssim": 0.9, "lpips": 0.1, **codebook, "num_images": 10000,
             "protocol": record}))
        (run / "times.jsonl").write_text("\n".join(json.dumps({"stage": s, "seconds": minutes * 30, "command": s})
                                                   for s in ("tokenizer", "gpt", "eval_gpt", "eval_tokenizer")))
        if budget == "unfinished":
            continue  # no GPT evaluation yet: left out
        (run / "eval_gpt").mkdir()
        # a diffusion head's loss is no likelihood: no bits
        bits = {} if budget == "1h_kl" else {"bits_per_token": 2.6, "bits_per_dim": 0.16}
        (run / "eval_gpt" / "eval.json").write_text(json.dumps(
            {"loss": 1.8, **bits, "samples": [
                {"cfg_scale": None, "fid": fid, "fid_noise_floor": 1.0, "fid_noise_floor_size": 5000,
                 "protocol": gpt_record, "class_accuracy": 0.75}]}))
    result = frontier_table.build(tmp_path)
    assert [r["budget"] for r in result["budgets"]] == ["20min", "1h", "1h_kl"]  # by budget, not by name
    assert [(r["rfid_protocol_id"], r["fid_protocol_id"]) for r in result["budgets"]] == [("A", "B")] * 3
    assert result["budgets"][0]["train_seconds"] == {"tokenizer": 300, "gpt": 300}  # evaluation is not training
    table = frontier_table.markdown(result)
    assert "| 20min | 3.00 [A], 24.00 dB, 0.100 | 0.160 | 8.00 [B] | 75.0% | 5 + 5 min |" in table
    assert "| 1h_kl | 1.50 [A], 24.00 dB, 0.100 | - | 9.00 [B] | 75.0% | 30 + 30 min |" in table
    frontier_table.plot(result, tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size[0] > 300


def test_the_heldout_table_reads_the_loss_curve_and_both_gpt_checkpoints(tmp_path):
    heldout_table = load_benchmark("heldout_table")
    for split, count in (("train", 3), ("test", 2)):
        (tmp_path / "data" / split / "0").mkdir(parents=True)
        for i in range(count):
            (tmp_path / "data" / split / "0" / f"{i}.png").write_bytes(b"")
    (tmp_path / "eval_tokenizer").mkdir()
    (tmp_path / "eval_tokenizer" / "eval.json").write_text(json.dumps({"rfid": 9.0, "psnr": 30.0, "protocol": {}}))
    rows = [{"step": 1, "train/loss": 5.0}, {"step": 500, "val/loss": 2.0}, {"step": 1000, "val/loss": 2.5},
            {"step": 1001, "train/loss": 0.5}]
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = {"metric": "loss", "value": 2.0, "step": 500, "stale": 1, "checkpoint": "gpt/checkpoints/best"}
    (tmp_path / "gpt" / "eval.json").write_text(json.dumps({"loss": 2.5, "best": best}))
    for name, step, fid in (("best", 500, 10.0), ("last", 1001, 20.0)):
        (tmp_path / "gpt" / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "gpt" / "checkpoints" / name / "config.json").write_text(json.dumps({"step": step}))
        (tmp_path / f"eval_gpt_{name}").mkdir()
        (tmp_path / f"eval_gpt_{name}" / "eval.json").write_text(json.dumps(
            {"loss": fid / 10, "bits_per_dim": 0.1, "samples": [{"fid": fid, "class_accuracy": 0.9,
                                                                  "protocol": {"num_samples": 1000}}]}))
    result = heldout_table.build(tmp_path)
    assert result["data"] == {"train": 3, "test": 2}
    gpt = result["gpt"]
    assert gpt["val_loss_curve"] == [{"step": 500, "val_loss": 2.0}, {"step": 1000, "val_loss": 2.5}]
    assert gpt["best"] == best and gpt["stopped_at"] == 1001 and gpt["last_train_loss"] == 0.5
    assert {k: (v["step"], v["samples"][0]["fid"]) for k, v in gpt["checkpoints"].items()} == {
        "best": (500, 10.0), "last": (1001, 20.0)}
    assert result["fid_protocol"] == {"num_samples": 1000} and result["tokenizer"] == {"rfid": 9.0, "psnr": 30.0}


def test_nearest_train_counts_copies_of_training_images_and_not_new_ones(tmp_path):
    nearest_train = load_benchmark("nearest_train")
    rng = np.random.default_rng(0)
    images = {"train": rng.random((20, 8, 8)), "test": rng.random((10, 8, 8))}
    images["copies"] = images["train"][:5] + 0.001  # a GPT that memorised: training images, all but exactly
    images["new"] = rng.random((5, 8, 8))
    for name, batch in images.items():
        folder = tmp_path / name / "0"
        folder.mkdir(parents=True)
        for i, x in enumerate(batch):
            Image.fromarray((x * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    out = nearest_train.report(tmp_path, [tmp_path / "copies" / "0", tmp_path / "new" / "0"])
    assert out["train_images"] == 20 and out["test"]["images"] == 10
    copies, new = out[str(tmp_path / "copies" / "0")], out[str(tmp_path / "new" / "0")]
    assert copies["near_copies"] == 1.0 and copies["median"] < 0.01
    assert new["near_copies"] < 1.0 and new["median"] > 0.1


def test_rejection_sampling_gets_the_classifier_it_was_given(tiny_ckpts, tmp_path, monkeypatch):
    """Regression: `evaluate.py stage=gpt checkpoint_classifier=... sampling.accept_n=8` was refused ("needs a
    classifier"): the sampling run was built without it."""
    import vqgpt.eval.evaluate as evaluate_module

    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(in_channels=3, image_size=8, num_classes=6, channels=[8]))
    save_checkpoint(tmp_path / "clf", classifier, stage="classifier", arch="classifier", meta=dataset_info(PATTERNS),
                    step=0)
    seen = {}

    def fake_sample_fid(models, fid, labels, num, s, batch_size, classifier=None, desc=""):
        seen.update(rejection=models.classifier, accuracy=classifier, accept_n=s.accept_n)
        return {"fid": 1.0, "protocol": {}, "seconds": 0.0}

    monkeypatch.setattr(evaluate_module, "sample_fid", fake_sample_fid)
    monkeypatch.setattr(evaluate_module, "build_fid", lambda *a, **k: None)
    run = EvaluateRun(checkpoint_vae=str(tiny_ckpts / "tok"), checkpoint_gpt=str(tiny_ckpts / "gpt"),
                      checkpoint_classifier=str(tmp_path / "clf"), fid=EvaluateFIDConfig(num_samples=6),
                      cache_dir=str(tmp_path / "cache"))
    run.sampling.accept_n = 8
    evaluate_module.evaluate_gpt(run, torch.device("cpu"))
    assert seen["accept_n"] == 8 and seen["rejection"] is not None and seen["accuracy"] is seen["rejection"]
