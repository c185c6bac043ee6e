"""The continuous heads' maths (vqgpt/models/heads.py): the mixture's NLL against torch.distributions, its draws,
the diffusion head learning a two-mode distribution, and how each guides."""

from __future__ import annotations

import math

import pytest
import torch

from vqgpt.config import GPTConfig, SamplingOptions
from vqgpt.errors import ArgumentError
from vqgpt.generate.pipeline import check_decoding_options
from vqgpt.models.heads import DiffusionHead, GaussianHead, MixtureHead, linear_guide
from vqgpt.models.patch_gpt import PatchGPT

D = 4


def config(**overrides) -> GPTConfig:
    return GPTConfig(**{**dict(token_dim=D, block_size=4, n_embd=8, num_mixtures=3, diffusion_width=32,
                               diffusion_depth=2), **overrides})


def test_the_mixture_loss_is_its_nll_per_number_without_the_constant():
    torch.manual_seed(0)
    head = MixtureHead(config())
    out = torch.randn(5, 3 * (1 + 2 * D))
    x = torch.randn(5, D)
    logits, means, log_stds = head.split(out)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(means, log_stds.exp()), 1))
    expected = -mixture.log_prob(x).mean() / D - 0.5 * math.log(2 * math.pi)
    assert head.loss(out, x).item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_one_component_mixture_is_the_gaussian_head():
    torch.manual_seed(0)
    mixture, gaussian = MixtureHead(config(num_mixtures=1)), GaussianHead(config())
    params = torch.randn(6, 2 * D)
    x = torch.randn(6, D)
    out = torch.cat([torch.zeros(6, 1), params], dim=-1)  # one logit, then the means and log-stds
    assert mixture.loss(out, x).item() == pytest.approx(gaussian.loss(params, x).item(), rel=1e-6)
    torch.testing.assert_close(mixture.mean(out), gaussian.mean(params))


def test_mixture_draws_pick_components_by_weight_and_temperature_scales_only_the_noise():
    head = MixtureHead(config(num_mixtures=2))
    means = torch.tensor([[-0.5] * D, [0.5] * D])
    out = torch.cat([torch.tensor([math.log(0.2), math.log(0.8)]), means.flatten(), torch.full((2 * D,), -3.0)])
    draws = head.sample(out.expand(4000, -1), 1.0, torch.Generator().manual_seed(0))  # (4000, D)
    upper = (draws.mean(dim=1) > 0).float().mean().item()
    assert upper == pytest.approx(0.8, abs=0.03)
    exact = head.sample(out.expand(100, -1), 1e-9, torch.Generator().manual_seed(0))
    assert ((exact - 0.5).abs().max(dim=1).values < 1e-6).sum() + ((exact + 0.5).abs().max(dim=1).values < 1e-6).sum() \
        == 100  # every draw exactly one component's mean: numbers move together
    torch.testing.assert_close(head.mean(out), 0.2 * means[0] + 0.8 * means[1])


def test_linear_guidance_mixes_conditional_and_unconditional_outputs():
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(linear_guide(torch.cat([cond, uncond]), 2.0), uncond + 2.0 * (cond - uncond))
    assert linear_guide(cond, None) is cond


def test_the_diffusion_head_learns_two_modes_and_samples_both():
    """A constant condition z and tokens that are +0.5 or -0.5 everywhere, 50/50: after a few hundred steps the
    denoiser's samples sit near the two modes, in about equal shares, not at their mean 0."""
    torch.manual_seed(0)
    head = DiffusionHead(config(diffusion_batch_mul=8))
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    z = torch.zeros(64, 8)
    for _ in range(400):
        x = torch.where(torch.rand(64, 1) < 0.5, 0.5, -0.5).expand(-1, D)
        loss = head.loss(z, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        draws = head.sample(torch.zeros(400, 8), 1.0, torch.Generator().manual_seed(1), steps=30)
    near = ((draws.abs() - 0.5).abs() < 0.15).all(dim=1).float().mean().item()
    upper = (draws.mean(dim=1) > 0).float().mean().item()
    assert near > 0.8 and 0.35 < upper < 0.65
    assert head.loss(z, x).item() < 0.5  # the noise is predicted well below its variance, 1


def test_diffusion_guidance_mixes_noise_predictions_so_scale_1_is_conditional_and_0_unconditional():
    torch.manual_seed(0)
    head = DiffusionHead(config())
    for p in head.parameters():  # untrained gates are zero: give the condition a say
        torch.nn.init.normal_(p, std=0.2)
    cond, uncond = torch.randn(3, 8), torch.randn(3, 8)
    both = torch.cat([cond, uncond])
    for scale, alone in ((1.0, cond), (0.0, uncond)):
        guided = head.sample(both, 1.0, torch.Generator().manual_seed(0), cfg_scale=scale, steps=6)
        plain = head.sample(alone, 1.0, torch.Generator().manual_seed(0), steps=6)
        torch.testing.assert_close(guided, plain, atol=1e-4, rtol=1e-4)  # u + 1 * (c - u) rounds apart from c
    assert not torch.allclose(head.sample(both, 1.0, torch.Generator().manual_seed(0), cfg_scale=3.0, steps=6),
                              head.sample(cond, 1.0, torch.Generator().manual_seed(0), steps=6))


def test_denoising_steps_belong_to_the_diffusion_head():
    with pytest.raises(ArgumentError, match="denoising_steps=20 is invalid: only a patch GPT with the diffusion head"):
        check_decoding_options(SamplingOptions(denoising_steps=20), masked=False, head="gaussian")
    with pytest.raises(ArgumentError, match="denoising_steps=0"):
        check_decoding_options(SamplingOptions(denoising_steps=0), masked=False, head="diffusion")
    check_decoding_options(SamplingOptions(denoising_steps=20), masked=False, head="diffusion")
    with pytest.raises(ValueError, match="diffusion_width=7 must be even"):
        PatchGPT(config(num_classes=0, diffusion_width=7))


def test_head_step_cost_times_a_training_step_of_every_case(tmp_path, monkeypatch):
    """benchmarks/head_step_cost.py (what sets gpt_fashionmnist_1h_kl's steps): every case is the frontier GPT with
    one head, a timed step trains it, and the JSON gives each case's ratio to the VQ step."""
    import json
    import sys

    from conftest import load_benchmark

    bench = load_benchmark("head_step_cost")
    for changes in bench.CASES.values():
        step, model = bench.step_fn(changes, batch=2)
        before = [p.detach().clone() for p in model.parameters()]
        step()
        assert sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)) > len(before) // 2
    out = tmp_path / "cost.json"
    monkeypatch.setattr(sys, "argv", ["head_step_cost.py", "--batch", "2", "--runs", "1", "--out", str(out)])
    bench.main()
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == set(bench.CASES)
    assert cases["vq_codes"]["ratio_to_vq"] == 1.0
    assert cases["diffusion_256x3_draws4"]["parameters"] > cases["diffusion_128x2_draws4"]["parameters"]
    assert all(c["ms_per_step"] > 0 for c in cases.values())


@pytest.mark.parametrize("head, unit", [("gaussian", "Gaussian NLL, nats/number"), ("mse", "MSE"),
                                        ("mixture", "mixture NLL, nats/number"),
                                        ("diffusion", "denoising loss, not a likelihood")])
def test_evaluate_names_each_heads_loss(head, unit):
    """Regression: evaluate.py printed a diffusion head's test loss as "per number (Gaussian NLL or MSE)"."""
    from vqgpt.eval.evaluate import table
    from vqgpt.eval.likelihood import loss_unit

    assert loss_unit(PatchGPT(config(head=head, num_classes=0))) == unit
    row = {"cfg_scale": None, "fid": 9.0, "seconds": 1.0, "fid_noise_floor": 1.0, "fid_noise_floor_size": 2,
           "protocol": {"num_samples": 4}}
    text = table({"stage": "gpt", "loss": 0.25, "loss_unit": unit, "samples": [row]})
    assert f"test: loss 0.2500 ({unit})" in text.splitlines()
