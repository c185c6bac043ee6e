"""The CUDA path against the CPU-verified one: what benchmarks/gpu/run.sh runs first on a GPU machine.

Each test runs on CUDA when there is one; without, only in the GPU command's dry run (VQGPT_GPU_DRY_RUN=1, on the
CPU: the same code, so the command cannot rot), and is skipped in the ordinary suite, whose CPU versions of these
checks live in test_engine.py and test_gpt.py.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from conftest import make_tokenizer
from test_engine import (
    CKPT,
    GPTTask,
    VQGANTask,
    assert_identical,
    fit,
    gpt_run,
    load_train_state,
    saved_state,
    switches_run,
    tokenizer_run,
    train_rows,
)

from vqgpt.config import GPTConfig
from vqgpt.eval.fid import full_fp32
from vqgpt.generate.sampling import generate
from vqgpt.models.gpt import GPT

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not CUDA and os.environ.get("VQGPT_GPU_DRY_RUN") != "1",
                                reason="needs a GPU (or VQGPT_GPU_DRY_RUN=1: the same checks on the CPU)")


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "tok"
    make_tokenizer(path)
    return path


def test_full_fp32_computes_convolutions_without_tf32():
    """FID's features must not move with TF32 (on by default for cuDNN convolutions on Ampere and newer)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 64, 32, 32, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    exact = torch.nn.functional.conv2d(x.double(), w.double())
    with full_fp32():
        ours = torch.nn.functional.conv2d(x.to(DEVICE), w.to(DEVICE)).cpu().double()
    assert (ours - exact).abs().max() / exact.abs().max() < 1e-5  # TF32 is ~1e-3 off


@pytest.mark.parametrize("grid", [4, 7])  # 7x7 = 49 tokens: a block size that is not a multiple of 8
def test_static_decode_equals_eager_token_for_token(grid):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=grid * grid, num_classes=3, n_layer=2, n_head=2,
                          n_embd=32)).to(DEVICE).eval()
    labels = torch.tensor([0, 1, 2, 0], device=DEVICE)
    eager = generate(model, 4, cond=labels, seed=1, top_k=20)
    compiled = generate(model, 4, cond=labels, seed=1, top_k=20, compile=True)
    assert torch.equal(compiled, eager)


def test_bf16_trains_like_fp32(tmp_path, vae):
    def run(precision: str, steps: int = 6):
        return switches_run(vae, precision=precision, max_steps=steps, lr=1e-2, min_lr=1e-2, warmup_steps=0,
                            device=DEVICE)

    for name, r in (("init", run("fp32", 0)), ("plain", run("fp32")), ("bf16", run("bf16"))):
        fit(GPTTask, r, tmp_path / name)
    init, plain, fast = (saved_state(tmp_path / d) for d in ("init", "plain", "bf16"))
    moved = torch.cat([(plain[k] - init[k]).flatten() for k in init])
    error = torch.cat([(fast[k] - plain[k]).flatten() for k in init])
    assert moved.norm() > 0.5 and error.norm() < 0.1 * moved.norm()


@pytest.mark.parametrize("switch", [dict(compile=True), dict(fused_adamw=True)], ids=["compile", "fused_adamw"])
def test_fast_switches_train_like_the_plain_gpt(tmp_path, vae, switch):
    fit(GPTTask, switches_run(vae, device=DEVICE), tmp_path / "plain")
    fit(GPTTask, switches_run(vae, device=DEVICE, **switch), tmp_path / "fast")
    plain, fast = saved_state(tmp_path / "plain"), saved_state(tmp_path / "fast")
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], atol=1e-4, rtol=1e-4)


def test_channels_last_tokenizer_trains_like_the_plain_one(tmp_path):
    fit(VQGANTask, tokenizer_run("trainer.max_steps=3", f"trainer.device={DEVICE}"), tmp_path / "plain")
    fit(VQGANTask, tokenizer_run("trainer.max_steps=3", f"trainer.device={DEVICE}", "trainer.channels_last=true"),
        tmp_path / "fast")
    plain, fast = saved_state(tmp_path / "plain"), saved_state(tmp_path / "fast")
    for k in plain:
        torch.testing.assert_close(fast[k].float(), plain[k].float(), atol=1e-3, rtol=1e-3)


def test_resume_is_exact_and_a_nan_step_is_skipped(tmp_path, vae):
    straight = gpt_run(vae, device=DEVICE, eval_every=2, sample_every=2)
    fit(GPTTask, straight, tmp_path / "straight")
    fit(GPTTask, straight, tmp_path / "split", stop_after=3)
    fit(GPTTask, dataclasses.replace(straight, resume=str(tmp_path / "split" / CKPT)), tmp_path / "split")
    assert train_rows(tmp_path / "split") == train_rows(tmp_path / "straight")
    assert_identical(saved_state(tmp_path / "split"), saved_state(tmp_path / "straight"))

    def nan_at_step_2(task, i):
        if i == 2:
            real = task.net
            task.net = lambda *a, **k: (lambda out: (out[0], out[1] * float("nan")))(real(*a, **k))
        elif i == 3:
            task.net = task.model

    fit(GPTTask, gpt_run(vae, device=DEVICE, max_steps=5), tmp_path / "nan", patch=nan_at_step_2)
    assert train_rows(tmp_path / "nan")[5]["train/skipped_steps"] == 1
    assert load_train_state(tmp_path / "nan" / CKPT)["step"] == 5
