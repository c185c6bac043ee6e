"""VQ-GAN tokenizer, PatchGAN discriminator and loss: invariants on tiny models (16x16 images, 8 channels)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqgpt.config import FSQConfig, TokenizerLossConfig, VQConfig, VQGANConfig
from vqgpt.errors import UserError
from vqgpt.eval.lpips import build_lpips
from vqgpt.tokenizers.vqgan.discriminator import NLayerDiscriminator, build_discriminator, patch_grid_side
from vqgpt.tokenizers.vqgan.losses import (
    VQGANLoss,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
)
from vqgpt.tokenizers.vqgan.model import VQGAN

QUANTIZERS = {  # one of each kind of quantizer, small
    "vq": dict(num_codewords=16),
    "vq_cosine_factorised_rotation": dict(num_codewords=16, cos_dist=True, proj_dim=2, gradient="rotation",
                                          init_method="latent_random", restart_after=2),
    "vq_ema": dict(num_codewords=16, decay=0.9, init_method="kmeans", kmeans_iters=2),
    "fsq": dict(name="fsq", levels=[3, 3]),
}


def quantizer_config(name: str = "vq", **kw) -> VQConfig | FSQConfig:
    return FSQConfig(**kw) if name == "fsq" else VQConfig(**kw)


def tiny_config(quantizer: str = "vq", **overrides) -> VQGANConfig:
    """A 16x16 VQ-GAN small enough to run in milliseconds; f = 4 unless ch_mult says otherwise."""
    loss = TokenizerLossConfig(disc_channels=8, disc_layers=2, disc_start=0)
    cfg = VQGANConfig(in_channels=3, image_size=16, channels=8, ch_mult=[1, 2, 2], num_res_blocks=1,
                          attn_resolutions=[], z_channels=8, embed_dim=4,
                          quantizer=quantizer_config(**QUANTIZERS[quantizer]), loss=loss)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.quantizer.embedding_dim = cfg.embed_dim  # what `${..embed_dim}` does in the YAML
    return cfg


def images(cfg: VQGANConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def lpips_net() -> nn.Module:
    # A RANDOM VGG backbone (with the lpips package's bundled linear heads): the invariants tested here
    # (shapes, gradients, loss algebra) do not need the real ImageNet weights, and no network is touched.
    return build_lpips(random_backbone=True)


def make_criterion(cfg: VQGANConfig, lpips_net: nn.Module | None) -> VQGANLoss:
    return VQGANLoss(cfg.loss, lpips_net, build_discriminator(cfg))


# ---------------------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("ch_mult,attn_resolutions,double_z,num_res_blocks,in_channels", [
    ([1], [], False, 1, 3),
    ([1, 2], [8], False, 1, 1),
    ([1, 2, 2], [4], True, 1, 3),
    ([1, 1, 2, 2], [16, 2], False, 2, 3),
])
def test_shapes_through_encoder_and_decoder(ch_mult, attn_resolutions, double_z, num_res_blocks, in_channels):
    cfg = tiny_config(ch_mult=ch_mult, attn_resolutions=attn_resolutions, double_z=double_z,
                      num_res_blocks=num_res_blocks, in_channels=in_channels)
    model = VQGAN(cfg)
    f = 2 ** (len(ch_mult) - 1)
    h = cfg.image_size // f
    assert model.downsample_factor == f and model.latent_grid == (h, h)
    has_attn = any(type(m).__name__ == "AttnBlock" for m in model.encoder.levels.modules())
    assert has_attn == bool(attn_resolutions)

    x = images(cfg, batch=3)
    z = model.encoder(x)
    assert z.shape == (3, cfg.z_channels * (2 if double_z else 1), h, h)
    assert model.encode_latents(x).shape == (3, cfg.embed_dim, h, h)
    x_rec, q = model(x)
    assert x_rec.shape == x.shape
    assert q.z_q.shape == (3, cfg.embed_dim, h, h) and q.loss.ndim == 0
    indices = model.tokenize(x)
    assert indices.shape == (3, h, h) and indices.dtype == torch.long
    assert 0 <= indices.min() and indices.max() < model.codebook_size == model.quantizer.num_codewords
    assert model.decode_indices(indices).shape == x.shape
    assert model.last_layer is model.decoder.conv_out.weight


def test_image_size_not_divisible_by_f_is_a_config_error():
    with pytest.raises(UserError, match=r"image_size 30 is not divisible by the downsampling factor f=4 "
                                        r"\(ch_mult has 3 entries\); change dataset.image_size"):
        VQGAN(tiny_config(image_size=30))


@pytest.mark.parametrize("overrides,loss_overrides,match", [
    ({"ch_mult": []}, {}, r"^ch_mult is empty"),
    ({"channels": 0}, {}, r"^channels=0 must be a positive integer"),
    ({"dropout": 1.0}, {}, r"^dropout=1.0 must be in \[0, 1\)"),
    ({}, {"rec_loss": "l3"}, r"^rec_loss='l3' is unknown; use one of l1, l2"),
    ({}, {"disc_loss": "wgan"}, r"disc_loss='wgan' is unknown; use one of hinge, non_saturating"),
    ({}, {"perceptual_net": "squeeze"}, r"^perceptual_net='squeeze' is unknown; use one of vgg, alex"),
    ({}, {"disc_weight": -1.0}, r"^disc_weight=-1.0 must be >= 0"),
    ({}, {"disc_layers": 3}, r"disc_layers=3 is too deep for image_size 16.*use [a-z.]*disc_layers=2"),
])
def test_bad_config_values_give_one_line_user_errors(overrides, loss_overrides, match, lpips_net):
    cfg = tiny_config(**overrides)
    for key, value in loss_overrides.items():
        setattr(cfg.loss, key, value)
    with pytest.raises(UserError, match=match) as info:
        VQGAN(cfg)
        make_criterion(cfg, lpips_net)
    assert "\n" not in str(info.value)


def test_embed_dim_mismatch_with_quantizer_is_a_config_error():
    """A library call names the dataclass's own keys (a ValueError); the command line adds `tokenizer.`."""
    from vqgpt.errors import argument_prefix

    cfg = tiny_config()
    cfg.quantizer.embedding_dim = 5
    with pytest.raises(ValueError, match=r"^quantizer.embedding_dim=5 differs from embed_dim=4"):
        VQGAN(cfg)
    with pytest.raises(UserError, match=r"^tokenizer.quantizer.embedding_dim=5 differs from tokenizer.embed_dim=4"):
        with argument_prefix("tokenizer."):
            VQGAN(cfg)


def warmed_up(model: VQGAN, cfg: VQGANConfig, steps: int = 3) -> VQGAN:
    """A few training-mode forwards, so latent inits, EMA updates and restarts have changed the codebook."""
    model.train()
    with torch.no_grad():
        for seed in range(steps):
            model(images(cfg, batch=4, seed=100 + seed))
    return model


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_decode_indices_of_tokenize_equals_forward_in_eval(quantizer):
    torch.manual_seed(0)
    cfg = tiny_config(quantizer, attn_resolutions=[4], dropout=0.1)  # dropout: eval mode must switch it off
    model = warmed_up(VQGAN(cfg), cfg).eval()
    x = images(cfg, batch=4)
    with torch.no_grad():
        x_rec, q = model(x)
        indices = model.tokenize(x)
        assert torch.equal(indices, q.indices)
        assert torch.allclose(model.decode_indices(indices), x_rec, atol=1e-5)
        assert torch.allclose(model.decode(model.encode(x).z_q), x_rec, atol=1e-5)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_gradients_reach_the_encoder_through_the_quantizer(quantizer):
    torch.manual_seed(0)
    cfg = tiny_config(quantizer)
    model = VQGAN(cfg).train()
    x = images(cfg)
    x_rec, q = model(x)
    F.l1_loss(x_rec, x).backward()  # reconstruction alone: the path back is the quantizer's estimator
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight",
                 "decoder.conv_out.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_state_dict_round_trip_into_a_model_built_from_the_same_config(quantizer):
    cfg = tiny_config(quantizer, attn_resolutions=[8])
    torch.manual_seed(0)
    model = warmed_up(VQGAN(cfg), cfg).eval()  # quantizer buffers (step, EMA, init) off their defaults
    torch.manual_seed(1)
    rebuilt = VQGAN(copy.deepcopy(cfg)).eval()
    x = images(cfg)
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], rebuilt(x)[0])
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(model(x)[0], rebuilt(x)[0])
        assert torch.equal(model.tokenize(x), rebuilt.tokenize(x))


# ---------------------------------------------------------------------------------------------------------
# Discriminator and loss


@pytest.mark.parametrize("image_size,n_layers", [(16, 1), (16, 2), (28, 3), (32, 3)])
def test_patchgan_output_grid(image_size, n_layers):
    disc = NLayerDiscriminator(in_channels=1, channels=8, n_layers=n_layers)
    side = patch_grid_side(image_size, n_layers)
    assert disc(torch.zeros(2, 1, image_size, image_size)).shape == (2, 1, side, side) and side >= 1


def test_gan_losses_match_their_formulas_on_fixed_logits():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # hinge: mean(relu(1 - real)) = (0 + 0.5 + 2) / 3, mean(relu(1 + fake)) = (0 + 1 + 2) / 3
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 3 / 3)))
    assert torch.isclose(hinge_g_loss(fake), torch.tensor(1 / 3))
    # non-saturating: binary cross-entropy with real = 1, fake = 0; generator wants fake = 1
    bce = F.binary_cross_entropy
    expected_d = 0.5 * (bce(torch.sigmoid(real), torch.ones(3)) + bce(torch.sigmoid(fake), torch.zeros(3)))
    assert torch.isclose(non_saturating_d_loss(real, fake), expected_d)
    assert torch.isclose(non_saturating_g_loss(fake), bce(torch.sigmoid(fake), torch.ones(3)))


class FixedLogits(nn.Module):
    """A 'discriminator' whose logits are the per-image pixel mean: lets the loss be checked by hand."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


@pytest.mark.parametrize("disc_loss", ["hinge", "non_saturating"])
def test_discriminator_loss_uses_real_and_detached_fake_logits(disc_loss):
    cfg = TokenizerLossConfig(disc_loss=disc_loss, disc_start=3, perceptual_weight=0.0)
    criterion = VQGANLoss(cfg, None, FixedLogits())
    x = torch.tensor([0.5, -0.5]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    x_rec = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1).expand(2, 1, 4, 4).requires_grad_()
    d_loss, logs = criterion.discriminator_loss(x, x_rec, step=3)
    real, fake = torch.tensor([0.5, -0.5]), torch.tensor([0.25, 0.75])
    expected = hinge_d_loss(real, fake) if disc_loss == "hinge" else non_saturating_d_loss(real, fake)
    assert torch.isclose(d_loss, expected)
    assert logs["train/d_loss"] == d_loss and torch.isclose(logs["train/logits_real"], real.mean())
    d_loss.backward()
    assert x_rec.grad is None  # the discriminator step never reaches the generator
    before, _ = criterion.discriminator_loss(x, x_rec, step=2)
    assert before == 0  # no discriminator loss before disc_start


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    a, b = torch.tensor([0.3, 0.1, 0.2]), torch.tensor([1.0, 2.0, 2.0])
    nll, g = (a * w).sum() ** 2, (b * w).sum()
    # d nll / dw = 2 (a . w) a = 0.4 a ;  d g / dw = b, whose norm is 3
    expected = (0.4 * a).norm() / (3.0 + 1e-4)
    assert torch.isclose(adaptive_weight(nll, g, w), expected)
    # clamped to 1e4 when the GAN gradient vanishes (0.4 |a| * 100 / 1e-4 would be ~1.5e5)
    assert adaptive_weight(100 * nll, 0 * g, w) == 1e4


def test_generator_loss_adaptive_weight_matches_a_hand_computation(lpips_net):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.loss.disc_weight = 0.7
    model, criterion = VQGAN(cfg), make_criterion(cfg, lpips_net)
    x = images(cfg)
    x_rec, q = model(x)
    loss, logs = criterion.generator_loss(x, x_rec, q.loss, step=0, last_layer=model.last_layer)

    nll = F.l1_loss(x_rec, x) + cfg.loss.perceptual_weight * lpips_net(x, x_rec).mean()
    g = -criterion.discriminator(x_rec).mean()  # hinge generator loss
    grad_nll, = torch.autograd.grad(nll, model.last_layer, retain_graph=True)
    grad_g, = torch.autograd.grad(g, model.last_layer, retain_graph=True)
    d_weight = cfg.loss.disc_weight * grad_nll.norm() / (grad_g.norm() + 1e-4)
    assert torch.isclose(logs["train/d_weight"], d_weight, rtol=1e-4)
    assert torch.isclose(loss, nll + d_weight * g + cfg.loss.codebook_weight * q.loss, rtol=1e-4)
    keys = {"train/loss", "train/rec_loss", "train/perceptual_loss", "train/g_loss", "train/d_weight"}
    assert keys <= set(logs)


def test_no_gan_term_before_disc_start(lpips_net):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.loss.disc_start = 10
    model, criterion = VQGAN(cfg), make_criterion(cfg, lpips_net)
    x = images(cfg)
    x_rec, q = model(x)
    loss, logs = criterion.generator_loss(x, x_rec, q.loss, step=9, last_layer=model.last_layer)
    assert logs["train/d_weight"] == 0 and logs["train/g_loss"] == 0
    assert torch.isclose(loss, logs["train/nll_loss"] + q.loss)
    loss.backward()
    assert all(p.grad is None for p in criterion.discriminator.parameters())
    assert not criterion.gan_active(9) and criterion.gan_active(10)
    criterion.cfg.disc_weight = 0.0  # no GAN at all: the discriminator is never run or trained
    assert not criterion.gan_active(10) and not criterion.gan_active(10**9)


def test_grayscale_images_go_through_lpips(lpips_net):
    cfg = tiny_config(in_channels=1)
    criterion = make_criterion(cfg, lpips_net)
    x = images(cfg)
    p = criterion.perceptual_loss(x, x.flip(0))
    assert p.ndim == 0 and p > 0 and criterion.perceptual_loss(x, x) < 1e-6
    with pytest.raises(UserError, match="LPIPS needs images of at least 16 px"):
        criterion.perceptual_loss(x[..., :8, :8], x[..., :8, :8])


def test_lpips_stays_frozen_and_in_eval_mode(lpips_net):
    criterion = make_criterion(tiny_config(), lpips_net).train()
    assert criterion.discriminator.training and not criterion.perceptual.training
    assert not any(p.requires_grad for p in criterion.perceptual.parameters())


def test_one_generator_step_and_one_discriminator_step_each_move_only_their_parameters(lpips_net):
    torch.manual_seed(0)
    cfg = tiny_config()
    model, criterion = VQGAN(cfg).train(), make_criterion(cfg, lpips_net).train()
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(criterion.discriminator.parameters(), lr=1e-3)
    snapshot = lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}  # noqa: E731
    moved = lambda m, old: {n for n, p in m.named_parameters() if not torch.equal(p, old[n])}  # noqa: E731
    x = images(cfg, batch=4)

    g_before, d_before = snapshot(model), snapshot(criterion.discriminator)
    x_rec, q = model(x)
    loss, logs = criterion.generator_loss(x, x_rec, q.loss, step=0, last_layer=model.last_layer)
    assert logs["train/d_weight"] > 0
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    g_moved = moved(model, g_before)
    assert {"encoder.conv_in.weight", "quant_conv.weight", "decoder.conv_out.weight"} <= g_moved
    assert len(g_moved) > len(g_before) // 2
    assert not moved(criterion.discriminator, d_before)

    g_after = snapshot(model)
    d_loss, d_logs = criterion.discriminator_loss(x, x_rec.detach(), step=0)
    opt_d.zero_grad(set_to_none=True)  # the generator step left gradients in the discriminator
    d_loss.backward()
    opt_d.step()
    # Every discriminator parameter with a gradient moved (at init the hinge gradients of the last bias
    # can cancel exactly: as many real as fake patches inside the margin).
    disc = criterion.discriminator
    with_grad = {n for n, p in disc.named_parameters() if p.grad is not None and p.grad.any()}
    assert moved(criterion.discriminator, d_before) == with_grad and len(with_grad) >= len(d_before) - 1
    assert not moved(model, g_after)
    assert set(d_logs) == {"train/d_loss", "train/logits_real", "train/logits_fake"}


def test_discriminator_probe_tells_a_blind_discriminator_from_a_seeing_one(tmp_path):
    """benchmarks/discriminator_probe.py (docs/quality.md): a discriminator whose convolutions are zero gives every
    input the same logit and is called blind; a fresh one does not; a checkpoint without one is refused."""
    import dataclasses

    from conftest import PATTERNS, load_benchmark

    from vqgpt.checkpoint import save_checkpoint
    from vqgpt.data import dataset_info

    probe = load_benchmark("discriminator_probe")
    torch.manual_seed(0)
    cfg = VQGANConfig(in_channels=3, image_size=8, channels=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8,
                      embed_dim=4, quantizer=VQConfig(num_codewords=32, embedding_dim=4),
                      loss=TokenizerLossConfig(disc_layers=1, disc_channels=8))
    model = VQGAN(cfg).eval()
    meta = {**dataset_info(PATTERNS), **model.checkpoint_meta(), "data_config": dataclasses.asdict(PATTERNS)}
    seeing, blind = build_discriminator(cfg), build_discriminator(cfg)
    with torch.no_grad():
        for conv in (m for m in blind.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.zero_()  # only the first layer's bias is left: the same map for every image
        blind.main[0].bias.fill_(0.5)
    spreads = {}
    for name, disc in (("seeing", seeing), ("blind", blind)):
        save_checkpoint(tmp_path / name, model, stage="tokenizer", arch="vqgan", meta=meta, step=1,
                        train_state={"modules": {"discriminator": disc.state_dict()}})
        logits = probe.probe(str(tmp_path / name), num=4)["logits"]
        assert set(logits) == {"real", "reconstruction", "noise", "black", "white"}
        spreads[name] = max(logits.values()) - min(logits.values())
    assert spreads["blind"] < 1e-6 < 1e-3 < spreads["seeing"]
    save_checkpoint(tmp_path / "none", model, stage="tokenizer", arch="vqgan", meta=meta, step=0)
    with pytest.raises(SystemExit, match="holds no discriminator"):
        probe.probe(str(tmp_path / "none"), num=4)
