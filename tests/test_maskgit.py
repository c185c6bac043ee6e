"""MaskGIT and masked parallel decoding: invariants on tiny models (2 layers, 32 wide, vocab 17, 12 tokens)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sharpened

from vqgpt.checkpoint import load_model, save_checkpoint
from vqgpt.config import GPTConfig, SamplingOptions
from vqgpt.errors import ArgumentError, UserError
from vqgpt.generate.masked import generate_masked, remaining_masked
from vqgpt.generate.pipeline import check_decoding_options
from vqgpt.generate.sampling import generate
from vqgpt.models.gpt_classifier import GPTClassifier
from vqgpt.models.maskgit import MaskGIT, mask_ratio

VOCAB, BLOCK, CLASSES, BATCH = 17, 12, 3, 4
LABELS = torch.tensor([0, 1, 2, 1])


def tiny_maskgit(seed: int = 0, sharp: bool = True, **overrides) -> MaskGIT:
    """A tiny MaskGIT in eval mode; `sharp`: weights drawn larger, so its predictions are far from uniform."""
    torch.manual_seed(seed)
    cfg = dict(name="maskgit", vocab_size=VOCAB, block_size=BLOCK, num_classes=CLASSES, n_layer=2, n_head=2, n_embd=32)
    model = MaskGIT(GPTConfig(**{**cfg, **overrides}))
    return sharpened(model) if sharp else model.eval()


def tokens(batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, BLOCK), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# The model


def test_logits_cover_every_position_and_the_mask_token_is_one_past_the_codebook():
    model = tiny_maskgit()
    logits, loss = model(tokens(), LABELS)
    assert logits.shape == (BATCH, BLOCK, VOCAB) and loss is None
    assert model.mask_token == VOCAB and model.transformer.wte.num_embeddings == VOCAB + 1
    assert model.transformer.wpe.num_embeddings == BLOCK + 1  # the class token's position too


def test_attention_is_bidirectional_so_a_later_token_changes_earlier_logits():
    model = tiny_maskgit()
    x = tokens()
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    before, after = model(x, LABELS)[0], model(changed, LABELS)[0]
    assert not torch.allclose(before[:, 0], after[:, 0])


@pytest.mark.parametrize("schedule", ["cosine", "linear", "square"])
def test_mask_ratio_runs_from_all_to_none_and_never_rises(schedule):
    r = mask_ratio(torch.linspace(0, 1, 101), schedule)
    assert r[0] == pytest.approx(1.0) and r[-1] == pytest.approx(0.0, abs=1e-6)
    assert (r[1:] <= r[:-1] + 1e-7).all()


def test_training_masks_a_drawn_share_and_scores_only_the_masked_tokens():
    model = tiny_maskgit().train()
    torch.manual_seed(1)
    mask = model.draw_mask(10_000, torch.device("cpu"))
    counts = mask.sum(dim=1).float()
    assert counts.min() >= 1 and counts.max() <= BLOCK
    # u ~ U(0, 1) through the cosine: the mean masked share is 2 / pi (plus the ceil's rounding up)
    assert (counts / BLOCK).mean().item() == pytest.approx(2 / math.pi, abs=0.05)
    # the loss on the masked tokens only: a target outside the mask never moves it
    model.eval()
    x = tokens()
    _, loss = model(x, LABELS, targets=x)
    generator = torch.Generator().manual_seed(0)  # the eval-mode draw, as forward makes it
    drawn = model.draw_mask(BATCH, x.device, generator)
    logits = model(x.masked_fill(drawn, model.mask_token), LABELS)[0]
    expected = torch.nn.functional.cross_entropy(logits[drawn], x[drawn])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_reach_the_embeddings_and_the_mask_row():
    model = tiny_maskgit(sharp=False).train()
    x = tokens()
    _, loss = model(x, LABELS, targets=x)
    loss.backward()
    assert model.transformer.wte.weight.grad[model.mask_token].abs().sum() > 0


def test_a_masked_model_is_refused_by_the_raster_loop_and_continuous_tokens_are_refused():
    with pytest.raises(ValueError, match="generate_masked"):
        generate(tiny_maskgit(), 2, cond=0)
    with pytest.raises(ValueError, match="name=maskgit predicts masked index tokens"):
        MaskGIT(GPTConfig(name="maskgit", token_dim=16, block_size=BLOCK, num_classes=0))
    with pytest.raises(ValueError, match="mask_schedule='cubic'"):
        tiny_maskgit(mask_schedule="cubic")


def test_checkpoint_round_trip_rebuilds_the_masked_model(tmp_path):
    model = tiny_maskgit()
    meta = dict(dataset="patterns", image_size=16, channels=3, num_classes=CLASSES, class_names=["a", "b", "c"],
                vocab_size=VOCAB, block_size=BLOCK)
    save_checkpoint(tmp_path / "ckpt", model, stage="gpt", arch="maskgit", meta=meta, step=0)
    loaded = load_model(tmp_path / "ckpt", expected_stage="gpt")
    assert isinstance(loaded, MaskGIT) and not loaded.causal
    x = tokens()
    assert torch.equal(loaded(x, LABELS)[0], model(x, LABELS)[0])


def test_the_probe_and_finetuning_read_whole_grids():
    from vqgpt.config import GPTClassifierConfig

    gpt = tiny_maskgit(sharp=False)
    assert gpt.feature_input(tokens()).shape == (BATCH, BLOCK + 1, 32)
    clf = GPTClassifier(GPTClassifierConfig(gpt=gpt.config, gpt_arch="maskgit", num_classes=CLASSES))
    logits, gen_loss = clf(tokens())
    assert logits.shape == (BATCH, CLASSES) and gen_loss.ndim == 0 and gen_loss > 0


# ---------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("steps", [1, 3, 8, 12])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_each_step_fixes_the_planned_count_and_fixed_tokens_never_change(steps, schedule):
    model = tiny_maskgit()
    seen = []
    generate_masked(model, BATCH, cond=LABELS, steps=steps, schedule=schedule, seed=0,
                    callback=lambda step, t, logits: seen.append(t.clone()))
    assert len(seen) == steps
    count = torch.full((BATCH,), BLOCK)
    masked_before = count
    for step, grid in enumerate(seen):
        masked = (grid == model.mask_token).sum(dim=1)
        planned = torch.minimum(remaining_masked(count, step, steps, schedule), (masked_before - 1).clamp(min=0))
        assert torch.equal(masked, planned)
        if step:
            fixed = seen[step - 1] != model.mask_token
            assert torch.equal(grid[fixed], seen[step - 1][fixed])  # once fixed, a token stays
        masked_before = masked
    assert (seen[-1] != model.mask_token).all() and seen[-1].max() < VOCAB


def test_the_same_seed_draws_the_same_grid_and_another_seed_another():
    model = tiny_maskgit()
    a = generate_masked(model, BATCH, cond=LABELS, seed=3)
    assert torch.equal(a, generate_masked(model, BATCH, cond=LABELS, seed=3))
    assert not torch.equal(a, generate_masked(model, BATCH, cond=LABELS, seed=4))


def test_one_step_at_low_temperature_is_the_argmax_of_the_fully_masked_grid():
    model = tiny_maskgit()
    out = generate_masked(model, BATCH, cond=LABELS, steps=1, temperature=1e-4, seed=0)
    empty = torch.full((BATCH, BLOCK), model.mask_token)
    assert torch.equal(out, model(empty, LABELS)[0].argmax(dim=-1))


def test_guidance_mixes_each_positions_logits():
    model = tiny_maskgit()
    empty = torch.full((BATCH, BLOCK), model.mask_token)
    cond_logits = model(empty, LABELS)[0]
    null_logits = model(empty, torch.full_like(LABELS, model.null_class))[0]
    guided = null_logits + 3.0 * (cond_logits - null_logits)
    out = generate_masked(model, BATCH, cond=LABELS, steps=1, temperature=1e-4, cfg_scale=3.0, seed=0)
    assert torch.equal(out, guided.argmax(dim=-1))


def test_editing_draws_only_the_region_and_keeps_every_other_token():
    model = tiny_maskgit()
    known = tokens()
    region = torch.zeros(BATCH, BLOCK, dtype=torch.bool)
    region[:, 4:7] = True
    region[0, 0] = True  # rows may differ
    out = generate_masked(model, BATCH, cond=LABELS, known=known, region=region, steps=4, seed=0)
    assert torch.equal(out[~region], known[~region])
    assert not torch.equal(out[region], known[region])  # redrawn (sharp random weights: another token somewhere)


def test_a_prefix_keeps_the_first_tokens_as_in_raster_completion():
    model = tiny_maskgit()
    prefix = tokens()[:, :5]
    out = generate_masked(model, BATCH, cond=LABELS, prefix=prefix, seed=0)
    assert torch.equal(out[:, :5], prefix) and (out < VOCAB).all()


def test_bad_masked_inputs_name_the_argument():
    model = tiny_maskgit()
    with pytest.raises(ArgumentError, match="steps=0"):
        generate_masked(model, 2, cond=0, steps=0)
    with pytest.raises(ArgumentError, match="schedule='cubic'"):
        generate_masked(model, 2, cond=0, schedule="cubic")
    with pytest.raises(UserError, match="go together"):
        generate_masked(model, 2, cond=0, known=tokens(2))
    with pytest.raises(UserError, match=r"must both have shape \(2, 12\)"):
        generate_masked(model, 2, cond=0, known=tokens(2)[:, :5], region=torch.ones(2, 5, dtype=torch.bool))


def test_options_of_the_other_order_are_refused_with_one_line():
    with pytest.raises(ArgumentError, match="steps=12 is invalid: only a masked GPT"):
        check_decoding_options(SamplingOptions(steps=12), masked=False)
    with pytest.raises(ArgumentError, match="compile=True is invalid: it compiles a raster GPT"):
        check_decoding_options(SamplingOptions(compile=True), masked=True)
    with pytest.raises(ArgumentError, match="quantize='int4'"):
        check_decoding_options(SamplingOptions(quantize="int4"), masked=False)
    check_decoding_options(SamplingOptions(steps=12, schedule="linear", confidence_noise=0.0), masked=True)


# ---------------------------------------------------------------------------------------------------------
# Through the scripts


def test_a_masked_gpt_trains_samples_evaluates_and_probes_through_the_same_scripts(tmp_path, run_script):
    import json

    from conftest import make_tokenizer
    from PIL import Image

    from vqgpt.checkpoint import load_checkpoint
    from vqgpt.config import ClassifyRun, ProbeConfig, TrainerConfig, TrainGPTRun
    from vqgpt.train.gpt import train_gpt
    from vqgpt.train.gpt_classifier import classify

    make_tokenizer(tmp_path / "tok")
    trainer = TrainerConfig(max_steps=4, batch_size=8, device="cpu", num_workers=0, eval_every=4, sample_every=4,
                            checkpoint_every=4, progress_bar=False, ema_decay=0.9)
    run = TrainGPTRun(checkpoint_vae=str(tmp_path / "tok"), gpt=GPTConfig(name="maskgit", n_layer=1, n_head=2,
                      n_embd=16), trainer=trainer, cache_dir=str(tmp_path / "cache"))
    results = train_gpt(run, tmp_path / "gpt", {})
    assert "loss" in results and "bits_per_dim" not in results  # a masked loss is not a likelihood
    gpt = tmp_path / "gpt" / "checkpoints" / "last"
    assert isinstance(load_checkpoint(gpt, expected_stage="gpt").model, MaskGIT)
    assert (tmp_path / "gpt" / "samples" / "step_0000004.png").exists()

    out = run_script("sample.py", f"checkpoint_vae={tmp_path / 'tok'}", f"checkpoint_gpt={gpt}",
                     "sampling.num_samples=2", "sampling.steps=3", "gif=true", "completion=true", "completion_images=2",
                     "completion_samples=2", "device=cpu", f"hydra.run.dir={tmp_path / 'sample'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "sample" / "decoding.gif").n_frames == 3  # one frame per decoding step
    assert (tmp_path / "sample" / "completion.png").exists()

    out = run_script("evaluate.py", "stage=gpt", f"checkpoint_vae={tmp_path / 'tok'}", f"checkpoint_gpt={gpt}",
                     "fid.num_samples=6", "fid.inception_score=false", "fid.reference_size=4", "fid.batch_size=4",
                     "sampling.steps=2", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'eval'}",
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["samples"][0]["fid"] > 0 and "bits_per_dim" not in evaluated
    assert evaluated["loss_unit"] == "nats per masked token, not a likelihood: no bits/dim"

    (tmp_path / "probe").mkdir()
    probe = classify(ClassifyRun(checkpoint_gpt=str(gpt), cache_dir=str(tmp_path / "cache"),
                                 probe=ProbeConfig(max_iter=20, val_fraction=0.5), trainer=TrainerConfig(device="cpu")),
                     tmp_path / "probe", {})
    assert set(probe["layers"]) == {"0", "1"} and probe["test_images"] == 8


def test_a_raster_option_on_a_masked_checkpoint_is_one_line_before_anything_is_written(tmp_path, run_script):
    from conftest import PATTERNS, make_tokenizer, one_error_line

    from vqgpt.data import dataset_info

    make_tokenizer(tmp_path / "tok")
    model = tiny_maskgit(vocab_size=32, block_size=16, num_classes=6)
    meta = {**dataset_info(PATTERNS), "vocab_size": 32, "block_size": 16, "latent_grid": [4, 4]}
    save_checkpoint(tmp_path / "gpt", model, stage="gpt", arch="maskgit", meta=meta, step=0)
    out = run_script("sample.py", f"checkpoint_vae={tmp_path / 'tok'}", f"checkpoint_gpt={tmp_path / 'gpt'}",
                     "sampling.compile=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "sampling.compile=True is invalid: it compiles a raster GPT's" in one_error_line(out)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# Editing


@pytest.fixture(scope="module")
def edit_ckpts(tmp_path_factory):
    """tok/ (8x8 px -> 4x4 tokens, K=32), maskgit/ and gpt/ (raster) that fit it."""
    from conftest import PATTERNS, make_gpt, make_tokenizer

    from vqgpt.data import dataset_info

    root = tmp_path_factory.mktemp("edit")
    make_tokenizer(root / "tok")
    make_gpt(root / "gpt")
    model = tiny_maskgit(vocab_size=32, block_size=16, num_classes=6)
    meta = {**dataset_info(PATTERNS), "vocab_size": 32, "block_size": 16, "latent_grid": [4, 4]}
    save_checkpoint(root / "maskgit", model, stage="gpt", arch="maskgit", meta=meta, step=0)
    return root


def load_pair(root, gpt: str):
    from vqgpt.config import SampleRun
    from vqgpt.generate.pipeline import load_models

    return load_models(SampleRun(checkpoint_vae=str(root / "tok"), checkpoint_gpt=str(root / gpt)),
                       torch.device("cpu"))


@pytest.mark.parametrize("gpt", ["maskgit", "gpt"])
def test_editing_keeps_every_token_and_pixel_outside_the_redrawn_cells(edit_ckpts, gpt):
    from vqgpt.generate.edit import box_region, edit_images, edit_tokens, token_cells
    from vqgpt.generate.pipeline import decode

    models = load_pair(edit_ckpts, gpt)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    region = box_region([3, 2, 6, 5], 8).expand(2, -1, -1)  # pixels 3..5 x 2..4: token cells (1..2) x (1..2)
    cells = token_cells(region, 2).flatten(1)
    assert cells[0].nonzero().flatten().tolist() == [5, 6, 9, 10]
    labels = torch.tensor([1, 4])
    real, edits, drawn = edit_tokens(models, images, region, labels, 3, SamplingOptions(seed=0))
    expected = cells if gpt == "maskgit" else torch.arange(16).expand(2, -1) >= 5  # raster: from the first on
    assert torch.equal(drawn, expected)
    kept = ~drawn[:, None].expand(-1, 3, -1)  # (B, num, T)
    assert torch.equal(edits[kept], real[:, None].expand(-1, 3, -1)[kept])
    edited, pixel_cells = edit_images(models, images, region, labels, 3, SamplingOptions(seed=0))
    assert edited.shape == (2, 3, 3, 8, 8) and pixel_cells.shape == (2, 1, 8, 8)
    assert (pixel_cells[:, 0] | ~region).all()  # the cells cover the region
    reconstruction = decode(models.tokenizer, real)
    outside = ~pixel_cells[:, None].expand_as(edited)
    assert torch.equal(edited[outside], reconstruction[:, None].expand_as(edited)[outside])


def test_edit_script_writes_the_figure_from_a_box_and_from_a_mask_png(edit_ckpts, tmp_path, run_script):
    from PIL import Image

    ckpts = [f"checkpoint_vae={edit_ckpts / 'tok'}", f"checkpoint_gpt={edit_ckpts / 'maskgit'}", "device=cpu"]
    out = run_script("edit.py", *ckpts, "box=[0,0,8,4]", "test_images=2", "num_variations=3", "class_label=2",
                     f"hydra.run.dir={tmp_path / 'box'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "box" / "edit.png").size == (5 * 10 + 2, 2 * 10 + 2)  # input, mask, 3 edits
    assert len(list((tmp_path / "box" / "edits").glob("*.png"))) == 6
    Image.new("RGB", (20, 20), "red").save(tmp_path / "in.png")
    mask = Image.new("L", (20, 20), 0)
    mask.paste(255, (10, 10, 20, 20))
    mask.save(tmp_path / "mask.png")
    out = run_script("edit.py", *ckpts, f"images=[{tmp_path / 'in.png'}]", f"mask={tmp_path / 'mask.png'}",
                     "num_variations=2", f"hydra.run.dir={tmp_path / 'mask'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "mask" / "edit.png").size == (4 * 10 + 2, 10 + 2)


def test_edit_without_a_region_is_one_line_and_writes_nothing(edit_ckpts, tmp_path, run_script):
    from conftest import one_error_line

    out = run_script("edit.py", f"checkpoint_vae={edit_ckpts / 'tok'}", f"checkpoint_gpt={edit_ckpts / 'maskgit'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "pass the region to re-draw: mask=<png>" in one_error_line(out)
    assert not (tmp_path / "run").exists()
