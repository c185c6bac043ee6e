"""int8 sampling (sampling.quantize=int8): which layers turn int8, how close the logits stay, and the scripts."""

from __future__ import annotations

import pytest
import torch
from conftest import one_error_line
from torch import nn

from vqgpt.config import GPTConfig
from vqgpt.errors import UserError
from vqgpt.generate.quantize import quantize_int8
from vqgpt.generate.sampling import generate
from vqgpt.models.gpt import GPT


def small_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, num_classes=3, n_layer=2, n_head=2, n_embd=64)).eval()


def test_every_linear_turns_int8_and_the_original_stays_fp32():
    model = small_gpt()
    fast = quantize_int8(model)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantized = {name for name, m in fast.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}
    assert linears and set(linears) == quantized
    assert all(isinstance(m, nn.Linear) for name, m in model.named_modules() if name in quantized)
    assert fast.lm_head.weight().dtype == torch.qint8


def test_int8_logits_stay_close_and_greedy_tokens_mostly_agree():
    model = small_gpt()
    fast = quantize_int8(model)
    x = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 3
    with torch.no_grad():
        ref, out = model(x, y)[0], fast(x, y)[0]
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9  # next-token argmax, teacher-forced
    tokens = generate(fast, 4, cond=1, seed=0)  # the KV-cache loop runs on it
    assert tokens.shape == (4, 16) and tokens.max() < 64


def test_int8_is_refused_off_the_cpu(monkeypatch):
    model = small_gpt()
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(UserError, match="int8 is a CPU path"):
        quantize_int8(model)


def test_sample_py_draws_with_an_int8_gpt_and_training_refuses_it(tiny_ckpts, tmp_path, run_script):
    out = run_script("sample.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", f"checkpoint_gpt={tiny_ckpts / 'gpt'}",
                     "sampling.num_samples=1", "sampling.quantize=int8", "device=cpu",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "run" / "images").glob("*.png"))) == 6
    out = run_script("train_gpt.py", f"checkpoint_vae={tiny_ckpts / 'tok'}", "sampling.quantize=int8",
                     "trainer=debug", f"hydra.run.dir={tmp_path / 'train'}", cwd=tmp_path)
    assert "sampling.quantize=int8 samples a trained checkpoint" in one_error_line(out)
