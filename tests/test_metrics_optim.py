"""Metrics against their definitions; the LR schedule's shape; AdamW's decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vqgpt.metrics import CodebookStats, psnr, ssim
from vqgpt.optim import adamw, lr_at


def test_psnr_matches_the_definition():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    y[1, :, :2] += 2.0  # half the pixels off by 1.0 on [0, 1] -> MSE 0.5 -> 10*log10(2)
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 10 * math.log10(2)]))


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (ssim(x, noisy) < 0.9).all()


def test_codebook_stats_usage_and_perplexity():
    stats = CodebookStats(8)
    stats.update(torch.tensor([[0, 1], [2, 3]]))
    stats.update(torch.tensor([0, 1, 2, 3]))
    out = stats.compute()
    assert out["usage"] == 0.5
    assert out["perplexity"] == pytest.approx(4.0)  # uniform over 4 codes


def test_lr_schedule_warms_up_then_decays_to_min():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, **kw) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # non-increasing after warmup
    assert lrs[60] == pytest.approx(0.55)  # halfway through the cosine
    assert lrs[115] == 0.1


def test_adamw_decays_matrices_only_and_steps_tied_weights_once():
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=True)
    head.weight = emb.weight  # tied
    norm = nn.LayerNorm(4)
    opt = adamw([emb, head, norm], lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 1  # the tied matrix, once
    assert {p.dim() for p in no_decay["params"]} == {1}
