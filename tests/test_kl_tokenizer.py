"""The VQ-GAN with a KL bottleneck (tokenizer/quantizer=kl): continuous tokens at unit scale, the KL term, and the
two stages through the scripts' code with a diffusion head on its tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_run

from vqgpt.checkpoint import load_checkpoint, load_model, save_checkpoint
from vqgpt.config import KLConfig, VQGANConfig
from vqgpt.tokenizers.quantizers.kl import KLBottleneck
from vqgpt.tokenizers.vqgan.model import VQGAN

D = 4


def kl_vqgan() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(VQGANConfig(in_channels=3, image_size=16, channels=8, ch_mult=[1, 2], num_res_blocks=1,
                             z_channels=8, embed_dim=D, quantizer=KLConfig(embedding_dim=D, kl_weight=1e-3)))


def test_tokens_are_continuous_and_decode_to_the_eval_reconstruction():
    model = kl_vqgan().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = model.tokenize(x)
    assert tokens.shape == (2, 8, 8, D) and tokens.dtype == torch.float32
    assert not model.is_discrete and model.codebook_size is None and model.token_dim == D
    assert model.checkpoint_meta()["token_dim"] == D
    rec, out = model(x)
    torch.testing.assert_close(model.decode_tokens(tokens), rec.clamp(-1, 1))
    torch.testing.assert_close(model.decode_tokens(tokens.flatten(1, 2).half()), rec.clamp(-1, 1), atol=2e-2, rtol=0)
    torch.testing.assert_close(out.indices, tokens)


def test_the_loss_is_the_weighted_kl_to_a_standard_normal():
    bottleneck = KLBottleneck(KLConfig(embedding_dim=D, kl_weight=0.5)).eval()
    z = torch.randn(2, D, 3, 3)
    mean, log_var = bottleneck.posterior(z)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    assert bottleneck(z).loss.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)


def test_training_draws_from_the_posterior_and_tracks_the_latents_std_for_unit_tokens():
    bottleneck = KLBottleneck(KLConfig(embedding_dim=D, std_momentum=0.5)).train()
    z = 5 * torch.randn(16, D, 4, 4)
    a, b = bottleneck(z).z_q, bottleneck(z).z_q
    assert not torch.equal(a, b)  # a draw each time
    for _ in range(20):
        bottleneck(z)
    std = bottleneck.posterior(z)[0].std()
    assert bottleneck.latent_std.item() == pytest.approx(std.item(), rel=1e-3)
    assert bottleneck.quantize(z).std().item() == pytest.approx(1.0, rel=1e-3)
    torch.testing.assert_close(bottleneck.dequantize(bottleneck.quantize(z)), bottleneck.posterior(z)[0])


def test_the_running_std_is_saved_with_the_weights(tmp_path):
    model = kl_vqgan()
    model.quantizer.latent_std.fill_(3.0)
    meta = {"dataset": "patterns", "image_size": 16, "channels": 3, "num_classes": 6, "class_names": list("abcdef"),
            **model.checkpoint_meta()}
    save_checkpoint(tmp_path / "tok", model, stage="tokenizer", arch="vqgan", meta=meta, step=0)
    assert load_model(tmp_path / "tok", expected_stage="tokenizer").quantizer.latent_std.item() == 3.0


def test_a_kl_tokenizer_trains_and_a_diffusion_gpt_trains_and_samples_on_its_tokens(tmp_path):
    from conftest import TINY_TOKENIZER

    from vqgpt.config import SampleRun, SamplingOptions
    from vqgpt.generate.pipeline import load_models, sample_images
    from vqgpt.train.gpt import train_gpt
    from vqgpt.train.tokenizer import train_tokenizer

    overrides = [o for o in TINY_TOKENIZER if not o.startswith(("tokenizer/quantizer", "tokenizer.quantizer"))]
    run = compose_run("train_tokenizer", *overrides, "tokenizer/quantizer=kl", "trainer.max_steps=3",
                      "trainer.device=cpu")
    results = train_tokenizer(run, tmp_path / "tok", {})
    assert results["psnr"] > 0 and "usage" not in results
    vae = tmp_path / "tok" / "checkpoints" / "last"
    assert load_checkpoint(vae).meta["token_dim"] == 8
    gpt = compose_run("train_gpt", f"checkpoint_vae={vae}", "gpt=tiny", "gpt.head=diffusion", "gpt.diffusion_width=16",
                      "trainer=debug", "trainer.batch_size=4", "trainer.device=cpu", "sampling.denoising_steps=3",
                      f"cache_dir={tmp_path / 'cache'}")
    train_gpt(gpt, tmp_path / "gpt", {})
    ckpt = tmp_path / "gpt" / "checkpoints" / "last"
    models = load_models(SampleRun(checkpoint_vae=str(vae), checkpoint_gpt=str(ckpt)), torch.device("cpu"))
    images = sample_images(models, 0, 2, SamplingOptions(denoising_steps=3), batch_size=2)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
