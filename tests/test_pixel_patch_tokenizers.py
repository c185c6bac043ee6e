"""The pixel palette (Image GPT) and patch (PatchGPT) tokenizers: interface invariants, palettes, and
train_tokenizer.py fitting and saving them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_run, one_error_line

from vqgpt.checkpoint import load_checkpoint
from vqgpt.config import PatchConfig, PixelConfig
from vqgpt.errors import UserError
from vqgpt.tokenizers.palette import PixelTokenizer, kmeans, resolve_pixel_config, uniform_palette
from vqgpt.tokenizers.patch import PatchTokenizer
from vqgpt.train.tokenizer import train_tokenizer


def pixel(**kw) -> PixelTokenizer:
    return PixelTokenizer(resolve_pixel_config(PixelConfig(**kw)))


@pytest.mark.parametrize("channels, num_colors", [(1, 16), (1, 2), (3, 8), (3, 64)])
def test_uniform_palette_tokens_are_the_nearest_level_and_decode_back(channels, num_colors):
    tok = pixel(in_channels=channels, image_size=5, num_colors=num_colors, palette="uniform")
    images = torch.rand(3, channels, 5, 5) * 2 - 1
    tokens = tok.tokenize(images)
    assert tokens.shape == (3, 5, 5) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < num_colors
    levels = round(num_colors ** (1 / channels))
    step = 2 / (levels - 1)
    assert (tok.decode_tokens(tokens) - images).abs().max() <= step / 2 + 1e-6  # nearest level, per channel
    assert torch.equal(tok.tokenize(tok.decode_tokens(tokens)), tokens)  # palette colours are fixed points
    assert torch.equal(tok.decode_tokens(tokens.flatten(1)), tok.decode_tokens(tokens))  # (B, h*w) too


def test_uniform_grey_palette_is_even_and_rgb_is_every_combination():
    assert torch.allclose(uniform_palette(16, 1).flatten(), torch.linspace(-1, 1, 16))
    corners = uniform_palette(8, 3)
    assert corners.shape == (8, 3) and set(corners.flatten().tolist()) == {-1.0, 1.0}
    assert len(torch.unique(corners, dim=0)) == 8


def test_kmeans_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-0.8, -0.8, -0.8], [0.8, 0.0, -0.5], [0.0, 0.9, 0.9], [0.5, -0.5, 0.5]])
    points = centres.repeat_interleave(500, 0) + 0.02 * torch.randn(2000, 3, generator=g)
    found = kmeans(points, 4, 10, g)
    assert torch.cdist(found, centres).min(dim=0).values.max() < 0.02


def test_auto_picks_16_greys_or_512_kmeans_colours_and_bad_palettes_are_refused():
    assert (resolve_pixel_config(PixelConfig(in_channels=1)).palette,
            resolve_pixel_config(PixelConfig(in_channels=1)).num_colors) == ("uniform", 16)
    rgb = resolve_pixel_config(PixelConfig(in_channels=3))
    assert (rgb.palette, rgb.num_colors) == ("kmeans", 512)
    with pytest.raises(UserError, match="levels\\*\\*3"):
        resolve_pixel_config(PixelConfig(in_channels=3, palette="uniform", num_colors=100))
    with pytest.raises(UserError, match="^palette='median'"):
        resolve_pixel_config(PixelConfig(palette="median"))
    with pytest.raises(UserError, match="num_colors=1 "):
        resolve_pixel_config(PixelConfig(num_colors=1))


@pytest.mark.parametrize("channels, size, patch", [(1, 8, 4), (3, 12, 3), (3, 8, 1), (1, 6, 6)])
def test_patchify_and_unpatchify_are_exact_inverses(channels, size, patch):
    tok = PatchTokenizer(PatchConfig(in_channels=channels, image_size=size, patch_size=patch))
    images = torch.randn(2, channels, size, size)
    tokens = tok.tokenize(images)
    side = size // patch
    assert tokens.shape == (2, side, side, patch * patch * channels) == (2, *tok.latent_grid, tok.token_dim)
    assert torch.equal(tok.decode_tokens(tokens), images)
    assert torch.equal(tok.decode_tokens(tokens.flatten(1, 2)), images)  # (B, h*w, D) too
    assert torch.equal(tok.tokenize(tok.decode_tokens(tokens)), tokens)
    # token (0, 1) is the top row's second patch: every pixel of it, nothing else
    assert torch.equal(tokens[:, 0, min(1, side - 1)].sort(dim=-1).values,
                       images[:, :, :patch, min(1, side - 1) * patch:][..., :patch].flatten(1).sort(dim=-1).values)
    assert not tok.is_discrete and tok.codebook_size is None


def test_patch_size_must_divide_the_image():
    with pytest.raises(UserError, match="^patch_size=5 must divide image_size=28"):
        PatchTokenizer(PatchConfig(in_channels=1, image_size=28, patch_size=5))


@pytest.mark.parametrize("overrides, arch, grid, codebook", [
    (("tokenizer=pixel", "tokenizer.num_colors=8", "tokenizer.fit_pixels=2000"), "pixel", [16, 16], 8),
    (("tokenizer=patch",), "patch", [4, 4], None),
])
def test_train_tokenizer_fits_saves_and_evaluates_without_training_steps(tmp_path, overrides, arch, grid, codebook):
    run = compose_run("train_tokenizer", "dataset=patterns", "dataset.image_size=16", "dataset.num_train=64",
                      "dataset.num_test=16", "trainer.device=cpu", "trainer.num_workers=0", *overrides)
    results = train_tokenizer(run, tmp_path, {})
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last", expected_stage="tokenizer")
    assert ckpt.meta["arch"] == arch and ckpt.meta["latent_grid"] == grid and ckpt.meta["codebook_size"] == codebook
    assert json.loads((tmp_path / "eval.json").read_text()) == results
    assert (tmp_path / "reconstructions" / "step_0000000.png").exists()
    if arch == "pixel":  # k-means on RGB patterns: the palette is the fitted one, reloaded exactly
        assert ckpt.model.config.palette == "kmeans" and len(torch.unique(ckpt.model.palette, dim=0)) == 8
        assert results["psnr"] > 15 and results["usage"] > 0.5
    else:
        assert results["psnr"] == 100.0 and "usage" not in results  # lossless (PSNR's 1e-10 floor)


@pytest.mark.parametrize("overrides, message", [
    (("dataset=patterns", "tokenizer=pixel", "tokenizer.palette=uniform", "tokenizer.num_colors=100"),
     "tokenizer.num_colors=100: a uniform RGB palette has levels**3 colours"),
    (("dataset=fashionmnist_small", "tokenizer=patch", "tokenizer.patch_size=5"),
     "tokenizer.patch_size=5 must divide tokenizer.image_size=28"),
])
def test_bad_palette_or_patch_size_is_one_error_line(tmp_path, run_script, overrides, message):
    out = run_script("train_tokenizer.py", *overrides, "trainer.device=cpu", cwd=tmp_path)
    assert message in one_error_line(out)
    assert not list(tmp_path.glob("outputs/**/checkpoints"))  # nothing saved


@pytest.mark.parametrize("arch", ["vqgan", "pixel", "patch"])
def test_inference_methods_run_without_autograd(arch):
    """Regression: tokenize/decode_tokens built autograd graphs (memory) for library users."""
    from vqgpt.config import PatchConfig, PixelConfig, VQConfig, VQGANConfig
    from vqgpt.tokenizers.palette import PixelTokenizer
    from vqgpt.tokenizers.patch import PatchTokenizer
    from vqgpt.tokenizers.vqgan.model import VQGAN

    model = {"vqgan": lambda: VQGAN(VQGANConfig(in_channels=1, image_size=8, channels=8, ch_mult=[1, 2],
                                                z_channels=4, embed_dim=4, quantizer=VQConfig(embedding_dim=4))),
             "pixel": lambda: PixelTokenizer(PixelConfig(in_channels=1, image_size=8)),
             "patch": lambda: PatchTokenizer(PatchConfig(in_channels=1, image_size=8, patch_size=4))}[arch]()
    images = torch.rand(2, 1, 8, 8, requires_grad=True) * 2 - 1
    tokens = model.tokenize(images)
    assert not tokens.requires_grad and not model.decode_tokens(tokens).requires_grad


@pytest.mark.parametrize("arch", ["pixel", "patch"])
def test_uint8_images_are_refused_with_the_conversion_to_use(arch):
    """Regression: uint8 images died in a raw conv dtype error; the line names vqgpt.images.to_model_space."""
    from vqgpt.config import PatchConfig, PixelConfig
    from vqgpt.images import to_model_space
    from vqgpt.tokenizers.palette import PixelTokenizer
    from vqgpt.tokenizers.patch import PatchTokenizer

    model = PixelTokenizer(PixelConfig(in_channels=1, image_size=8)) if arch == "pixel" else \
        PatchTokenizer(PatchConfig(in_channels=1, image_size=8, patch_size=4))
    pixels = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"images of torch.uint8: .* vqgpt.images.to_model_space"):
        model.tokenize(pixels)
    assert model.tokenize(to_model_space(pixels, 1)).shape[:3] == (2, *model.latent_grid)
