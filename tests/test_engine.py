"""The training engine: exact resume, stops on signals, non-finite steps skipped, EMA, the fast-path switches and
atomic saves, on the real stage tasks (tiny models, CPU)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_TOKENIZER, compose_run, make_tokenizer

from vqgpt.checkpoint import EMA_FILE, load_checkpoint
from vqgpt.config import GPTConfig, SampleRun, TrainerConfig, TrainGPTRun
from vqgpt.errors import UserError
from vqgpt.generate.pipeline import load_models
from vqgpt.models.gpt import GPT
from vqgpt.train.engine import Engine, Interrupted
from vqgpt.train.gpt import GPTTask
from vqgpt.train.image_classifier import ClassifierTask
from vqgpt.train.optim import adamw
from vqgpt.train.state import Best, load_train_state
from vqgpt.train.tokenizer import VQGANTask

CKPT = Path("checkpoints") / "last"


def fit(task_cls, run, out: Path, stop_after: int | None = None, patch=None):
    """Train `run` into `out` on the engine and return the task (`.results`: None when stopped); `stop_after`:
    act as if SIGTERM came during that step; `patch`: fn(task, step) run before each step (to inject faults)."""
    engine = Engine(run.trainer, out, {}, run.logger, resume=run.resume)
    task = task_cls(run, engine)
    step_fn = task.train_step

    def step(e: Engine, i: int) -> dict:
        if patch is not None:
            patch(task, i)
        logs = step_fn(e, i)
        if stop_after is not None and i + 1 == stop_after:
            e._signal = signal.SIGTERM
        return logs

    task.train_step = step
    try:
        task.results = engine.fit(task)
    except Interrupted:
        task.results = None
    return task


def train_rows(out: Path) -> dict[int, dict]:
    """metrics.jsonl's train/* values by step (each step exactly once)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/lr" in r]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if k.startswith(("train/", "codebook/"))}
            for r in rows if "train/lr" in r}


def saved_state(out: Path) -> dict[str, torch.Tensor]:
    """Every weight and buffer the run saved: the model (raw and EMA) and the other trained modules."""
    ckpt = out / CKPT
    state = {f"model.{k}": v for k, v in load_checkpoint(ckpt, ema=False).model.state_dict().items()}
    if (ckpt / EMA_FILE).is_file():
        state.update({f"ema.{k}": v for k, v in load_checkpoint(ckpt).model.state_dict().items()})
    for name, module in load_train_state(ckpt)["modules"].items():
        state.update({f"{name}.{k}": v for k, v in module.items()})
    return state


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def tokenizer_run(*overrides: str, restart_after: int | None = 2, batch_size: int = 8):
    # restart_after=2: dead codes are reseeded all along, so restarts happen after the break too
    return compose_run("train_tokenizer", *TINY_TOKENIZER, "trainer.max_steps=8", "trainer.checkpoint_every=100",
                       "trainer.eval_every=100", "trainer.sample_every=100", f"trainer.batch_size={batch_size}",
                       "tokenizer.quantizer.num_codewords=64",
                       f"tokenizer.quantizer.restart_after={'null' if restart_after is None else restart_after}",
                       *overrides)


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "tok"
    make_tokenizer(path)
    return path


def gpt_run(vae: Path, name: str = "gpt", **trainer) -> TrainGPTRun:
    t = dict(max_steps=8, batch_size=4, grad_accum=2, warmup_steps=2, device="cpu", num_workers=0, log_every=1,
             eval_every=100, sample_every=100, checkpoint_every=100, progress_bar=False, ema_decay=0.9)
    t.update(trainer)
    return TrainGPTRun(checkpoint_vae=str(vae), trainer=TrainerConfig(**t),
                       gpt=GPTConfig(name=name, n_layer=1, n_head=2, n_embd=16, dropout=0.1, class_dropout=0.2))


# ---------------------------------------------------------------------------------------------------------
# exact resume


def test_tokenizer_resumed_mid_run_matches_the_straight_run_bit_for_bit(tmp_path):
    fit(VQGANTask, tokenizer_run(), tmp_path / "straight")
    assert fit(VQGANTask, tokenizer_run(), tmp_path / "split", stop_after=4).results is None
    assert load_train_state(tmp_path / "split" / CKPT)["step"] == 4
    fit(VQGANTask, tokenizer_run("resume=true"), tmp_path / "split")

    straight, split = train_rows(tmp_path / "straight"), train_rows(tmp_path / "split")
    assert sorted(split) == list(range(1, 9)) and split == straight  # every loss, every step, once
    assert any("train/d_loss" in r for s, r in split.items() if s > 4)  # the discriminator was active after it
    state = saved_state(tmp_path / "split")
    assert int(state["model.quantizer.born_at"].max()) > 4  # and a dead code was reseeded after the break
    assert_identical(state, saved_state(tmp_path / "straight"))


@pytest.mark.parametrize("name", ["gpt", "maskgit"])  # the masked model's masks come from the restored RNG too
def test_gpt_with_accumulation_dropout_and_ema_resumes_bit_for_bit(tmp_path, vae, name):
    fit(GPTTask, gpt_run(vae, name), tmp_path / "straight")
    fit(GPTTask, gpt_run(vae, name), tmp_path / "split", stop_after=3)  # mid-epoch: 24 images are 3 steps of 8
    fit(GPTTask, dataclasses.replace(gpt_run(vae, name), resume=str(tmp_path / "split" / CKPT)), tmp_path / "split")
    assert train_rows(tmp_path / "split") == train_rows(tmp_path / "straight")
    state = saved_state(tmp_path / "split")
    assert any(k.startswith("ema.") for k in state)
    assert_identical(state, saved_state(tmp_path / "straight"))
    key = "transformer.wte.weight"
    assert not torch.equal(state[f"ema.{key}"], state[f"model.{key}"])


def test_a_resume_across_evaluations_and_pictures_is_exact(tmp_path, vae):
    """Regression: a run of 3 steps extended to 6 drifted from a straight run of 6 once an evaluation or a
    picture fell after the resume point (they drew from the training's random streams)."""
    cadence = dict(lr=1e-3, min_lr=1e-3, warmup_steps=0, eval_every=1, sample_every=1, checkpoint_every=1)
    fit(GPTTask, gpt_run(vae, max_steps=6, **cadence), tmp_path / "straight")
    fit(GPTTask, gpt_run(vae, max_steps=3, **cadence), tmp_path / "split")  # its last step: no periodic eval
    fit(GPTTask, dataclasses.replace(gpt_run(vae, max_steps=6, **cadence), resume="true"), tmp_path / "split")
    assert train_rows(tmp_path / "split") == train_rows(tmp_path / "straight")
    assert_identical(saved_state(tmp_path / "split"), saved_state(tmp_path / "straight"))


def test_extending_a_finished_run_says_how_the_schedule_continues(tmp_path, vae, capsys):
    fit(GPTTask, gpt_run(vae, max_steps=4, ema_decay=None), tmp_path / "run")
    capsys.readouterr()
    fit(GPTTask, dataclasses.replace(gpt_run(vae, max_steps=6, ema_decay=None), resume="true"), tmp_path / "run")
    out = capsys.readouterr().out
    assert "trainer.max_steps 4 -> 6: the LR schedule is recomputed for 6 steps" in out
    assert sorted(train_rows(tmp_path / "run")) == list(range(1, 7))


def test_resume_true_without_a_checkpoint_in_the_run_dir_is_one_clear_error(tmp_path, vae):
    with pytest.raises(UserError, match="resume=true but this run dir has no checkpoint"):
        fit(GPTTask, dataclasses.replace(gpt_run(vae), resume="true"), tmp_path / "empty")


def distributed_case(stage: str, vae: Path | None, processes: int):
    """(task class, run, steps) of the torchrun tests: a global batch of 8 split over `processes`, nothing random
    that differs by rank (no dropout, no dead-code restarts), so N processes must match one. The tokenizer's
    discriminator joins at step 2."""
    if stage == "tokenizer":
        return VQGANTask, tokenizer_run("trainer.max_steps=6", restart_after=None, batch_size=8 // processes), 6
    if stage in ("gpt", "maskgit"):  # maskgit: its masks are drawn per rank, so only ranks and resume can agree
        run = gpt_run(vae, stage, max_steps=6, batch_size=8 // processes)
        return GPTTask, dataclasses.replace(run, gpt=dataclasses.replace(run.gpt, dropout=0.0, class_dropout=0.0)), 6
    run = compose_run("train_classifier", "dataset=patterns", "dataset.image_size=16", "dataset.num_train=32",
                      "dataset.num_test=8", "trainer=debug", "trainer.max_steps=6",
                      f"trainer.batch_size={8 // processes}", "trainer.checkpoint_every=100", "classifier.dropout=0")
    return ClassifierTask, run, 6


@pytest.mark.parametrize("stage", ["tokenizer", "gpt", "maskgit", "classifier"])
def test_two_processes_agree_with_each_other_with_one_process_and_with_their_own_resume(tmp_path, vae, stage):
    """torchrun, 2 gloo processes: identical weights on both ranks; equal (to float tolerance) to one process on the
    same global batch (not the masked GPT: each rank draws its own masks); and a run stopped halfway and resumed
    ends bit for bit where the straight one did."""
    worker = Path(__file__).parent / "ddp_worker.py"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(worker), stage, str(tmp_path), str(vae)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    runs = {name: [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in (0, 1)]
            for name in ("straight", "stopped", "resumed")}
    for first, second in runs.values():
        assert_identical(first, second)
    assert_identical(runs["resumed"][0], runs["straight"][0])
    assert re.search(r"batch \d+ = 4 per process x \d accumulated x 2 processes", out.stdout)
    if stage == "maskgit":
        return

    task_cls, run, steps = distributed_case(stage, vae, processes=1)
    single = fit(task_cls, run, tmp_path / "single")
    for name, module in single.modules.items():
        for k, v in module.state_dict().items():
            ours = runs["straight"][0][f"{name}.{k}"]
            if not v.dtype.is_floating_point:  # step counters, code ages, flags
                assert torch.equal(ours, v), f"{name}.{k}"
                continue
            if k.endswith(".bias") and stage == "tokenizer":
                # Conv biases feeding the VQ-GAN's one-channel-per-group GroupNorms are (nearly) cancelled by them:
                # their gradients are rounding-sized, and Adam turns rounding into steps of +-lr of either sign.
                # They can only be held to that bound.
                assert (ours - v).abs().max() <= 2 * run.trainer.lr * steps, f"{name}.{k}"
                continue
            torch.testing.assert_close(ours, v, atol=1e-4, rtol=1e-3,
                                       msg=f"{name}.{k}: max difference {(ours - v).abs().max():.3g}")


# ---------------------------------------------------------------------------------------------------------
# non-finite steps


def test_a_nan_loss_skips_the_step_and_is_logged_as_null(tmp_path, vae):
    seen: dict[int, torch.Tensor] = {}

    def nan_at_step_2(task, i):
        seen[i] = task.model.lm_head.weight.detach().clone()
        if i == 2:
            real = task.net

            def poisoned(*args, **kwargs):
                logits, loss = real(*args, **kwargs)
                return logits, loss * float("nan")

            task.net = poisoned
        elif i == 3:
            task.net = task.model

    fit(GPTTask, gpt_run(vae, max_steps=5, ema_decay=None), tmp_path / "run", patch=nan_at_step_2)
    assert torch.equal(seen[2], seen[3])  # no update from the bad step
    assert not torch.equal(seen[3], seen[4])  # the next one trains again
    rows = train_rows(tmp_path / "run")
    assert rows[3]["train/loss"] is None and rows[3]["train/skipped_steps"] == 1  # valid JSON: null, not NaN
    assert rows[5]["train/skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in saved_state(tmp_path / "run").values())


def test_too_many_bad_steps_stop_the_run_and_keep_the_good_checkpoint(tmp_path, vae):
    def nan_from_step_4(task, i):
        if i == 4:
            real = task.net
            task.net = lambda *a, **k: (lambda out: (out[0], out[1] * float("nan")))(real(*a, **k))

    run = gpt_run(vae, max_steps=20, ema_decay=None, checkpoint_every=2, max_bad_steps=3)
    with pytest.raises(UserError, match=r"not finite for 3 steps in a row \(trainer.max_bad_steps=3\)"):
        fit(GPTTask, run, tmp_path / "run", patch=nan_from_step_4)
    state = saved_state(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert load_train_state(tmp_path / "run" / CKPT)["step"] == 4  # not one saved during the bad streak


def test_a_nan_in_the_discriminator_never_reaches_the_generator(tmp_path):
    """The discriminator's bad step is skipped on its own: the generator still trains, the discriminator keeps its
    weights, and both stay finite."""
    seen = {}

    def nan_disc_at_step_5(task, i):
        seen[i] = ({k: v.clone() for k, v in task.model.state_dict().items()},
                   {k: v.clone() for k, v in task.discriminator.state_dict().items()})
        if i == 5:
            real = task.criterion.discriminator_loss
            task.criterion.discriminator_loss = lambda *a, **k: (lambda out: (out[0] * float("nan"), out[1]))(
                real(*a, **k))
        elif i == 6:
            del task.criterion.discriminator_loss  # back to the class's method

    fit(VQGANTask, tokenizer_run(), tmp_path / "run", patch=nan_disc_at_step_5)
    gen5, disc5 = seen[5]
    gen6, disc6 = seen[6]
    assert_identical(disc5, disc6)
    assert not torch.equal(gen5["encoder.conv_in.weight"], gen6["encoder.conv_in.weight"])
    rows = train_rows(tmp_path / "run")
    assert rows[8]["train/skipped_steps"] == 0 and rows[8]["train/skipped_discriminator_steps"] == 1
    assert all(torch.isfinite(v.float()).all() for v in saved_state(tmp_path / "run").values())


def test_a_bad_discriminator_step_at_the_end_still_evaluates_and_saves_the_generator(tmp_path):
    """Regression: a non-finite discriminator step counted as a bad iteration: no EMA update, no checkpoint, and
    on the last step the run ended with no eval.json."""
    def nan_disc_at_the_last_step(task, i):
        if i == 7:
            real = task.criterion.discriminator_loss
            task.criterion.discriminator_loss = lambda *a, **k: (lambda out: (out[0] * float("nan"), out[1]))(
                real(*a, **k))

    task = fit(VQGANTask, tokenizer_run("trainer.ema_decay=0.9"), tmp_path / "run", patch=nan_disc_at_the_last_step)
    assert task.results and (tmp_path / "run" / "eval.json").is_file()
    assert load_train_state(tmp_path / "run" / CKPT)["step"] == 8  # saved at the last step
    assert load_train_state(tmp_path / "run" / CKPT)["skipped_steps"] == {"model": 0, "discriminator": 1}
    raw, ema = load_checkpoint(tmp_path / "run" / CKPT, ema=False).model, load_checkpoint(tmp_path / "run" / CKPT).model
    assert not torch.equal(raw.encoder.conv_in.weight, ema.encoder.conv_in.weight)  # the EMA kept updating


# ---------------------------------------------------------------------------------------------------------
# the best checkpoint and early stopping

BEST = Path("checkpoints") / "best"
HELD_OUT_LOSS = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.6, 5: 1.0, 6: 0.5, 7: 0.4, 8: 0.3}  # by step: best at 2, then two worse


@pytest.fixture
def scripted_loss(monkeypatch):
    """Each evaluation's held-out loss is HELD_OUT_LOSS at its step (the real evaluation runs; its loss is
    replaced), so when the run should stop is known in advance."""
    evaluate = GPTTask.evaluate
    monkeypatch.setattr(GPTTask, "evaluate", lambda task, model: {**evaluate(task, model),
                                                                  "loss": HELD_OUT_LOSS[task.done]})


def best_run(vae: Path, **trainer) -> TrainGPTRun:
    constant = dict(lr=1e-3, min_lr=1e-3, warmup_steps=0)  # the same LR at every step whatever max_steps is
    return gpt_run(vae, **{**constant, "eval_every": 1, "keep_best": "loss", "early_stop": 2, **trainer})


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {**{f"raw.{k}": v for k, v in load_checkpoint(ckpt, ema=False).model.state_dict().items()},
            **{f"ema.{k}": v for k, v in load_checkpoint(ckpt).model.state_dict().items()}}


def test_keep_best_saves_the_best_evaluations_weights_and_early_stop_ends_the_run(tmp_path, vae, scripted_loss,
                                                                                  capsys):
    task = fit(GPTTask, best_run(vae), tmp_path / "run")
    out = capsys.readouterr().out
    assert "step 4: stopped early: loss has not improved for 2 evaluations" in out
    assert "keep_best=loss chooses on the test split" in out  # this data holds no images out
    assert load_train_state(tmp_path / "run" / CKPT)["step"] == 4  # stopped at 4 of 8; resumable from there
    assert max(train_rows(tmp_path / "run")) == 4
    assert task.results["best"] == {"metric": "loss", "value": 2.0, "step": 2, "stale": 2,
                                    "checkpoint": str(tmp_path / "run" / BEST)}
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["best"]["step"] == 2
    assert (tmp_path / "run" / "samples" / "step_0000004.png").is_file()  # a picture of where it stopped
    best = load_checkpoint(tmp_path / "run" / BEST)
    assert best.meta["step"] == 2 and best.meta["best"] == {"metric": "loss", "value": 2.0}
    fit(GPTTask, best_run(vae, max_steps=2, keep_best=None, early_stop=0), tmp_path / "two_steps")
    assert_identical(weights(tmp_path / "run" / BEST), weights(tmp_path / "two_steps" / CKPT))


def test_a_resumed_run_judges_and_stops_as_the_uninterrupted_one(tmp_path, vae, scripted_loss):
    """The best so far and the evaluations since it are train state: the run stopped after step 3 (one evaluation
    without a new best) stops at step 4 once resumed, with step 2's weights as the best, as the straight run."""
    fit(GPTTask, best_run(vae), tmp_path / "straight")
    fit(GPTTask, best_run(vae), tmp_path / "split", stop_after=3)
    resumed = fit(GPTTask, dataclasses.replace(best_run(vae), resume="true"), tmp_path / "split")
    assert resumed.results["best"]["step"] == 2 and max(train_rows(tmp_path / "split")) == 4
    assert train_rows(tmp_path / "split") == train_rows(tmp_path / "straight")
    assert_identical(weights(tmp_path / "split" / BEST), weights(tmp_path / "straight" / BEST))


def test_without_early_stop_the_run_ends_at_max_steps_and_the_last_evaluation_can_be_the_best(tmp_path, vae,
                                                                                              scripted_loss):
    task = fit(GPTTask, best_run(vae, early_stop=0), tmp_path / "run")
    assert task.results["best"]["step"] == 8 and max(train_rows(tmp_path / "run")) == 8
    assert_identical(weights(tmp_path / "run" / BEST), weights(tmp_path / "run" / CKPT))


def test_best_follows_each_metrics_direction_and_takes_no_nan_or_tie():
    loss, accuracy = Best("loss"), Best("accuracy")
    assert [loss.update({"loss": v}, i) for i, v in enumerate([float("nan"), 2.0, 2.0, 3.0, 1.0])] == [
        False, True, False, False, True]
    assert (loss.value, loss.step, loss.stale) == (1.0, 4, 0)
    assert [accuracy.update({"accuracy": v}, i) for i, v in enumerate([0.5, 0.4, 0.6])] == [True, False, True]


@pytest.mark.parametrize(("trainer", "message"), [
    ({"keep_best": "los"}, r"^trainer.keep_best=los is not a metric vqgpt knows the better direction of; use one of "
                           r"accuracy, bits_per_dim, .*loss"),
    ({"keep_best": None, "early_stop": 3}, r"^trainer.early_stop=3 needs trainer.keep_best"),
    ({"keep_best": "psnr"}, r"^trainer.keep_best=psnr but this stage's evaluation reports no psnr; use one of "
                            r"bits_per_dim, bits_per_token, loss$"),
])
def test_keep_best_settings_that_cannot_work_are_one_clear_error(tmp_path, vae, trainer, message):
    with pytest.raises(UserError, match=message):
        fit(GPTTask, best_run(vae, **trainer), tmp_path / "run")


# ---------------------------------------------------------------------------------------------------------
# EMA, sample.py's switch, the fast paths


def test_ema_weights_are_what_evaluation_and_loading_use_unless_asked_for_raw(tmp_path, vae):
    fit(GPTTask, gpt_run(vae, max_steps=4), tmp_path / "run")
    ckpt = tmp_path / "run" / CKPT
    ema, raw = load_checkpoint(ckpt), load_checkpoint(ckpt, ema=False)
    assert (ema.weights, raw.weights) == ("ema", "raw")
    assert not torch.equal(ema.model.lm_head.weight, raw.model.lm_head.weight)
    for use_ema, expected in ((True, ema), (False, raw)):  # sample.py's `ema` switch
        models = load_models(SampleRun(checkpoint_vae=str(vae), checkpoint_gpt=str(ckpt), ema=use_ema), "cpu")
        assert torch.equal(models.gpt.lm_head.weight, expected.model.lm_head.weight)


def switches_run(vae: Path, **trainer) -> TrainGPTRun:
    run = gpt_run(vae, **{"max_steps": 3, "grad_accum": 1, "ema_decay": None, **trainer})
    return dataclasses.replace(run, gpt=dataclasses.replace(run.gpt, dropout=0.0, class_dropout=0.0))


def test_bf16_autocast_gpt_trains_like_the_fp32_one(tmp_path, vae):
    """bf16 runs (its losses are not fp32's bit for bit) and takes the fp32 run's steps: the weights' total update
    over 6 steps at lr 1e-2 agrees to within 10 % of its size (a wrong bf16 path, e.g. one that drops the
    gradient of a layer or its scale, misses by far more), and the losses to bf16's precision."""
    def run(precision: str, steps: int = 6) -> TrainGPTRun:
        return switches_run(vae, precision=precision, max_steps=steps, lr=1e-2, min_lr=1e-2, warmup_steps=0)

    fit(GPTTask, run("fp32", steps=0), tmp_path / "init")
    fit(GPTTask, run("fp32"), tmp_path / "plain")
    fit(GPTTask, run("bf16"), tmp_path / "bf16")
    init, plain, fast = (saved_state(tmp_path / d) for d in ("init", "plain", "bf16"))
    moved = torch.cat([(plain[k] - init[k]).flatten() for k in init])
    error = torch.cat([(fast[k] - plain[k]).flatten() for k in init])
    assert moved.norm() > 0.5  # the run trained: ~6 steps of 1e-2 on thousands of weights
    assert error.norm() < 0.1 * moved.norm(), (error.norm(), moved.norm())
    for name in init:  # every tensor that trained, trained the same way (no layer left out)
        delta = plain[name] - init[name]
        if delta.norm() > 1e-3:
            assert (fast[name] - plain[name]).norm() < 0.25 * delta.norm(), name
    losses = [[r["train/loss"] for _, r in sorted(train_rows(tmp_path / d).items())] for d in ("plain", "bf16")]
    assert losses[0] != losses[1]  # bf16 autocast did run
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=2e-2, atol=0)


def test_fused_adamw_matches_the_foreach_one(vae):
    """The kernel `trainer.fused_adamw` picks (here on the CPU, where torch has it too) steps like the default."""
    torch.manual_seed(0)
    models = [GPT(GPTConfig(vocab_size=32, block_size=16, num_classes=6, n_layer=1, n_head=2, n_embd=16,
                            class_dropout=0.0))]
    models.append(copy.deepcopy(models[0]))
    optimizers = [adamw(m, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
                  for m, fused in zip(models, (False, True), strict=True)]
    tokens, labels = torch.randint(0, 32, (4, 16)), torch.randint(0, 6, (4,))
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            model(tokens, labels, targets=tokens)[1].backward()
            optimizer.step()
            optimizer.zero_grad()
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults["fused"]
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fused_adamw_is_a_cuda_switch_in_the_engine(tmp_path, vae):
    run = switches_run(vae, fused_adamw=True)
    engine = Engine(run.trainer, tmp_path, {}, run.logger, resume=None)
    assert not GPTTask(run, engine).optimizers["model"].defaults["fused"]  # on the CPU: foreach


def test_channels_last_tokenizer_matches_the_plain_one(tmp_path):
    fit(VQGANTask, tokenizer_run("trainer.max_steps=3"), tmp_path / "plain")
    fit(VQGANTask, tokenizer_run("trainer.max_steps=3", "trainer.channels_last=true"), tmp_path / "fast")
    plain, fast = saved_state(tmp_path / "plain"), saved_state(tmp_path / "fast")
    for k in plain:
        torch.testing.assert_close(fast[k].float(), plain[k].float(), atol=1e-3, rtol=1e-3)


def test_channels_last_classifier_matches_the_plain_one(tmp_path):
    def run(**trainer):
        return compose_run("train_classifier", "dataset=patterns", "dataset.image_size=16", "dataset.num_train=32",
                           "dataset.num_test=8", "trainer=debug", "trainer.max_steps=3",
                           *[f"trainer.{k}={v}" for k, v in trainer.items()])

    fit(ClassifierTask, run(), tmp_path / "plain")
    fit(ClassifierTask, run(channels_last=True), tmp_path / "fast")
    plain, fast = saved_state(tmp_path / "plain"), saved_state(tmp_path / "fast")
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], atol=1e-3, rtol=1e-3)  # Adam's first steps magnify


@pytest.mark.slow
def test_compiled_gpt_matches_the_plain_one(tmp_path, vae):
    fit(GPTTask, switches_run(vae), tmp_path / "plain")
    fit(GPTTask, switches_run(vae, compile=True), tmp_path / "compiled")
    plain, compiled = saved_state(tmp_path / "plain"), saved_state(tmp_path / "compiled")
    for k in plain:
        torch.testing.assert_close(compiled[k], plain[k], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# crashes during a save


# The child of the test below: one more save of the run in argv[1], killed (os._exit(9), as kill -9) inside it.
KILLED_SAVE = """
import os, sys, dataclasses
sys.path.insert(0, {tests!r})
import vqgpt.checkpoint as checkpoint
from test_engine import EMA_FILE, GPTTask, fit, gpt_run
from pathlib import Path
dies_in = {dies_in!r}
def die(*args, **kwargs):
    os._exit(9)
if dies_in == "ema":
    real_save = checkpoint._save_weights
    checkpoint._save_weights = lambda m, f: die() if f.endswith(EMA_FILE) else real_save(m, f)
elif dies_in == "train_state":
    checkpoint.torch.save = die
else:  # between the two renames that swap the new checkpoint in
    real_replace = os.replace
    checkpoint.os.replace = lambda a, b: die() if Path(a).name.startswith(".last.tmp-") else real_replace(a, b)
fit(GPTTask, dataclasses.replace(gpt_run(Path({vae!r}), max_steps=4), resume="true"), Path({out!r}))
"""


@pytest.mark.parametrize("dies_in", ["ema", "train_state", "swap"])
def test_a_kill_during_a_save_leaves_the_last_checkpoint_loadable_and_resumable(tmp_path, vae, dies_in):
    """A child process resumes the run and is killed in the middle of its next save: the first checkpoint, with
    its EMA weights and train state, still loads and resumes."""
    out = tmp_path / "run"
    fit(GPTTask, gpt_run(vae, max_steps=2), out)
    code = KILLED_SAVE.format(tests=str(Path(__file__).parent), dies_in=dies_in, vae=str(vae), out=str(out))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert child.returncode == 9, child.stderr
    ckpt = load_checkpoint(out / CKPT)  # falls back to last.old when the kill came between the renames
    assert ckpt.meta["step"] == 2 and ckpt.weights == "ema"
    fit(GPTTask, dataclasses.replace(gpt_run(vae, max_steps=4), resume="true"), out)
    assert load_checkpoint(out / CKPT).meta["step"] == 4
    assert not list(out.joinpath("checkpoints").glob(".last.tmp-*"))  # the next save cleaned up


def test_engine_signal_handler_finishes_the_step_then_a_second_signal_exits_at_once(tmp_path, vae, monkeypatch):
    run = gpt_run(vae)
    engine = Engine(run.trainer, tmp_path, {}, run.logger, resume=None)
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    with engine._signals():
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        assert engine._signal == signal.SIGTERM and exits == []  # the first only asks the loop to stop
        handler(signal.SIGINT, None)
        assert exits == [128 + signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is not handler  # put back after training
    assert Interrupted("x", signal.SIGTERM).exit_code == 143 and Interrupted("x", signal.SIGINT).exit_code == 130


# ---------------------------------------------------------------------------------------------------------
# a real signal to a real training process


def test_sigterm_stops_a_training_script_whose_printed_command_resumes_it_exactly(tmp_path, tiny_ckpts):
    """SIGTERM mid-run: exit 143 with one line that says how to continue; running that line finishes the run with
    the weights of an uninterrupted one."""
    args = [f"checkpoint_vae={tiny_ckpts / 'tok'}", "gpt=tiny", "trainer=debug", "trainer.max_steps=600",
            "trainer.num_threads=1",
            "trainer.batch_size=4", "trainer.log_every=10", "trainer.eval_every=100000",
            "trainer.checkpoint_every=100000", "trainer.sample_every=100000"]
    env = {**os.environ, "HOME": str(tmp_path), "VQGPT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    straight = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_gpt.py"), *args,
                               f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_gpt.py"), *args, f"hydra.run.dir={run}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("SIGTERM: finishing")]
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGTERM at step "), stderr
    stopped_at = load_train_state(run / CKPT)["step"]
    assert 40 <= stopped_at < 600

    command = shlex.split(lines[0].split("continue with: ", 1)[1])
    assert command[0] == "python" and command[-1] == "resume=true"
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: continuing from step {stopped_at}" in resumed.stdout
    assert_identical(saved_state(run), saved_state(tmp_path / "straight"))
    assert sorted(train_rows(run)) == sorted(train_rows(tmp_path / "straight"))  # each step logged once


def test_torchrun_runs_a_script_unchanged_into_one_run_dir(tmp_path, tiny_ckpts):
    """`torchrun --nproc_per_node=2 scripts/train_gpt.py ...` with the default timestamped run dir: both processes
    use rank 0's dir (one dir, Hydra's files written once), and the run says its global batch once."""
    env = {**os.environ, "HOME": str(tmp_path), "VQGPT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "scripts" / "train_gpt.py"), f"checkpoint_vae={tiny_ckpts / 'tok'}", "gpt=tiny",
                          "trainer=debug", "trainer.batch_size=4"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    runs = list((tmp_path / "outputs" / "train_gpt").iterdir())
    assert len(runs) == 1 and (runs[0] / ".hydra" / "config.yaml").is_file()
    assert load_checkpoint(runs[0] / CKPT).meta["step"] == 4
    assert out.stdout.count("batch 8 = 4 per process x 1 accumulated x 2 processes") == 1


@pytest.mark.slow
def test_compiled_tokenizer_matches_the_plain_one(tmp_path, monkeypatch):
    """The VQ-GAN's generator step backpropagates twice through the compiled graph (the adaptive GAN weight), which
    AOT autograd refused until its donated buffers were turned off. Compiled with the aot_eager backend: the same
    graph capture and autograd, without Inductor's C++ code generation (47 s of this test on 2 cores; the compiled
    GPT test above and the GPU run cover Inductor)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **{"backend": "aot_eager", **kw}))
    fit(VQGANTask, tokenizer_run("trainer.max_steps=3", restart_after=None), tmp_path / "plain")
    fit(VQGANTask, tokenizer_run("trainer.max_steps=3", "trainer.compile=true", restart_after=None),
        tmp_path / "compiled")
    plain, compiled = saved_state(tmp_path / "plain"), saved_state(tmp_path / "compiled")
    for k in plain:
        torch.testing.assert_close(compiled[k].float(), plain[k].float(), atol=1e-3, rtol=1e-3)
