"""Metrics against their definitions; the LR schedule's shape; AdamW's decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vqgpt.eval.metrics import CodebookStats, psnr, ssim
from vqgpt.train.optim import adamw, lr_at


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


def test_adamw_decays_layer_weights_only_and_steps_tied_weights_once():
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=True)
    head.weight = emb.weight  # tied: a table of codes, so not decayed
    proj = nn.Linear(4, 4)
    norm = nn.LayerNorm(4)
    opt = adamw([emb, head, proj, norm], lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] == [proj.weight]
    assert sum(p is emb.weight for p in no_decay["params"]) == 1  # the tied matrix, once


def test_weight_decay_spares_vq_codebooks_and_gpt_embeddings():
    """Regression: every 2-D parameter used to be decayed, the learned VQ codebook included."""
    from vqgpt.config import GPTConfig, VQConfig, VQGANConfig
    from vqgpt.models.gpt import GPT
    from vqgpt.tokenizers.vqgan.model import VQGAN

    vqgan = VQGAN(VQGANConfig(image_size=8, channels=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, embed_dim=4,
                              quantizer=VQConfig(num_codewords=8, embedding_dim=4)))
    decay, no_decay = adamw(vqgan, lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1).param_groups
    assert any(p is vqgan.quantizer.codebook for p in no_decay["params"])
    assert not any(p is vqgan.quantizer.codebook for p in decay["params"])
    assert any(p is vqgan.encoder.conv_in.weight for p in decay["params"])
    gpt = GPT(GPTConfig(vocab_size=8, block_size=4, num_classes=2, n_layer=1, n_head=2, n_embd=8))
    decay, no_decay = adamw(gpt, lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1).param_groups
    embeddings = {id(m.weight) for m in gpt.modules() if isinstance(m, nn.Embedding)}
    assert embeddings and not embeddings & {id(p) for p in decay["params"]}
    assert len(decay["params"]) == sum(isinstance(m, nn.Linear) for m in gpt.modules()) - gpt.config.tie_weights
