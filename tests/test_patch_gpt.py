"""PatchGPT (continuous patches): causality, the KV-cache path against the no-cache oracle, every head, and the
whole GPT stage and sampling pipeline through tokenizer=patch. The heads' own maths: tests/test_heads.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from vqgpt.checkpoint import load_checkpoint, save_checkpoint
from vqgpt.config import DatasetConfig, GPTConfig, PatchConfig, SampleRun, SamplingConfig, TrainerConfig, TrainGPTRun
from vqgpt.data import dataset_info
from vqgpt.errors import UserError
from vqgpt.generate import pipeline, writer
from vqgpt.generate.sampling import generate, generate_nocache
from vqgpt.models.patch_gpt import PatchGPT
from vqgpt.tokenizers.patch import PatchTokenizer
from vqgpt.train.gpt import train_gpt

D = 12  # 2x2 RGB patches


HEADS = ["gaussian", "mse", "mixture", "diffusion"]


def model(head: str = "gaussian", num_classes: int = 3) -> PatchGPT:
    torch.manual_seed(0)
    cfg = GPTConfig(token_dim=D, block_size=9, num_classes=num_classes, n_layer=2, n_head=2, n_embd=16, head=head,
                    num_mixtures=3, diffusion_width=16, diffusion_depth=2)
    return PatchGPT(cfg).eval()


@pytest.mark.parametrize("head", HEADS)
def test_changing_patch_t_never_changes_predictions_before_t(head):
    gpt = model(head)
    x = torch.randn(2, 9, D)
    out, _ = gpt(x, torch.tensor([0, 2]))
    for t in (0, 4, 7):
        y = x.clone()
        y[:, t] += 1.0
        changed, _ = gpt(y, torch.tensor([0, 2]))
        assert torch.equal(out[:, :t + 1], changed[:, :t + 1])  # out[:, i] sees patches before i only
        assert not torch.allclose(out[:, t + 1:], changed[:, t + 1:])


@pytest.mark.parametrize("head, cfg_scale", [("gaussian", None), ("gaussian", 2.0), ("mse", None), ("mixture", None),
                                             ("mixture", 2.0), ("diffusion", None), ("diffusion", 2.0)])
def test_kv_cache_generation_equals_the_no_cache_oracle(head, cfg_scale):
    gpt = model(head)
    kwargs = dict(cond=torch.tensor([1, 0, 2]), temperature=0.7, cfg_scale=cfg_scale, seed=3, denoising_steps=5)
    fast = generate(gpt, 3, **kwargs)
    slow = generate_nocache(gpt, 3, **kwargs)
    assert fast.shape == (3, 9, D) and fast.dtype == torch.float
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    prefix = torch.randn(3, 4, D)
    completed = generate(gpt, 3, prefix=prefix, **kwargs)
    assert torch.equal(completed[:, :4], prefix)
    torch.testing.assert_close(completed, generate_nocache(gpt, 3, prefix=prefix, **kwargs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["gaussian", "mse", "mixture"])
def test_the_head_predicts_in_fp32_under_bf16_autocast(head):
    """The transformer may run in bf16 (a GPU's autocast); the predicted patch stays fp32 (8 mantissa bits would
    be coarser than the pixels), equal to the head applied to the bf16 hidden states in fp32."""
    gpt = model(head)
    seen = []
    gpt.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = gpt(torch.randn(2, 9, D), torch.tensor([0, 2]))
    assert out.dtype == torch.float32 and seen[0].dtype == torch.float32
    torch.testing.assert_close(out, torch.nn.functional.linear(seen[0], gpt.head.weight, gpt.head.bias),
                               rtol=0, atol=0)  # an fp32 matmul: bf16 would be off by ~1e-2


def test_gaussian_samples_differ_and_mse_samples_are_the_mean():
    gaussian, mse = model("gaussian", num_classes=0), model("mse", num_classes=0)
    a = generate(gaussian, 4, seed=0)
    assert not torch.allclose(a[0], a[1])  # noise: four different images
    b = generate(mse, 4, seed=0)
    assert torch.equal(b[0], b[1]) and torch.equal(b, generate(mse, 4, seed=1))  # deterministic means
    torch.testing.assert_close(generate(gaussian, 2, temperature=1e-9, seed=0),
                               generate(gaussian, 2, temperature=1e-9, seed=5), atol=1e-6, rtol=0)  # the means


def test_gaussian_loss_is_the_nll_and_mse_the_squared_error():
    x = torch.randn(2, 9, D)
    gpt = model("mse")
    out, loss = gpt(x, None, targets=x)
    assert torch.allclose(loss, (x - out).square().mean())
    gpt = model("gaussian")
    out, loss = gpt(x, None, targets=x)
    mean, log_std = out[..., :D], out[..., D:].clamp(min=torch.log(torch.tensor(1 / 255)))
    normal = torch.distributions.Normal(mean, log_std.exp())
    nll = normal.log_prob(x).neg() - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    assert torch.allclose(loss, nll.mean(), atol=1e-5)
    loss.backward()
    assert gpt.transformer.wte.weight.grad.abs().sum() > 0


def test_token_filters_are_refused_for_patches():
    with pytest.raises(UserError, match="^top_k=5 is invalid: top_k and top_p filter a softmax"):
        generate(model(), 2, top_k=5)


DATA = DatasetConfig(name="patterns", image_size=8, channels=3, num_classes=6, num_train=32, num_test=8)


@pytest.mark.parametrize("head", ["gaussian", "mixture", "diffusion"])
def test_the_gpt_stage_and_every_sampling_output_run_on_patches(tmp_path, head):
    tok = PatchTokenizer(PatchConfig(in_channels=3, image_size=8, patch_size=2))
    meta = {**dataset_info(DATA), **tok.checkpoint_meta(), "data_config": dataclasses.asdict(DATA)}
    save_checkpoint(tmp_path / "tok", tok, stage="tokenizer", arch="patch", meta=meta, step=0)
    trainer = TrainerConfig(max_steps=3, batch_size=8, warmup_steps=1, device="cpu", num_workers=0, log_every=1,
                            eval_every=10, sample_every=3, checkpoint_every=3, progress_bar=False)
    run = TrainGPTRun(checkpoint_vae=str(tmp_path / "tok"), gpt=GPTConfig(n_layer=1, n_head=2, n_embd=16, head=head,
                                                                         diffusion_width=16),
                      trainer=trainer, sampling=SamplingConfig(denoising_steps=4 if head == "diffusion" else None))
    results = train_gpt(run, tmp_path / "gpt", {})
    assert set(results) == {"loss"}
    ckpt = load_checkpoint(tmp_path / "gpt" / "checkpoints" / "last", expected_stage="gpt")
    assert ckpt.meta["arch"] == "patch_gpt" and isinstance(ckpt.model, PatchGPT)
    assert (ckpt.model.config.token_dim, ckpt.model.config.block_size, ckpt.model.config.vocab_size) == (12, 16, 0)
    assert Image.open(tmp_path / "gpt" / "samples" / "step_0000003.png").size == (8 * 10 + 2, 6 * 10 + 2)

    sample = SampleRun(checkpoint_vae=str(tmp_path / "tok"), checkpoint_gpt=str(tmp_path / "gpt/checkpoints/last"),
                       sampling=SamplingConfig(num_samples=2, denoising_steps=run.sampling.denoising_steps), gif=True,
                       completion=True, completion_images=2,
                       completion_samples=2, device="cpu")
    models = pipeline.load_models(sample, torch.device("cpu"))
    out = tmp_path / "samples"
    out.mkdir()
    written = writer.write_outputs(sample, models, out, writer.plan_outputs(sample, models))
    assert [p.name for p in written] == ["samples.png", "decoding.gif", "completion.png"]
    assert len(list((out / "images").iterdir())) == 12
    assert Image.open(out / "decoding.gif").n_frames == 4  # one frame per row of the 4x4 patch grid
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    real, completions = pipeline.complete(models, images, torch.tensor([0, 1]), 3, SamplingConfig())
    assert completions.shape == (2, 3, 4, 4, 12)
    assert torch.equal(completions[:, :, :2], real[:, None, :2].expand(-1, 3, -1, -1, -1))  # the top half kept
    with pytest.raises(UserError, match="top_k"):
        pipeline.check_sample_run(dataclasses.replace(sample, sampling=SamplingConfig(top_k=3)), 0, 0)
