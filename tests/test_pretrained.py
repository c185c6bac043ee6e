"""vqgpt.Pipeline: from a training run, a saved folder or the Hub cache (offline), images from one call,
save_pretrained round trips, push_to_hub with the upload replaced by a fake, README's snippet."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml
from conftest import PATTERNS, ROOT, make_gpt, make_tokenizer
from PIL import Image

import vqgpt
from vqgpt.checkpoint import load_checkpoint
from vqgpt.config import GPTConfig, VQConfig, VQGANConfig
from vqgpt.errors import UserError
from vqgpt.models.gpt import GPT
from vqgpt.models.maskgit import MaskGIT
from vqgpt.tokenizers.vqgan.model import VQGAN

EVAL = {"loss": 3.1, "bits_per_dim": 0.52, "fid": 41.5, "fid_protocol": {"num_samples": 6, "reference": "test"}}


@pytest.fixture
def run(tmp_path):
    """A train_gpt.py run dir as the script leaves it: checkpoints/last, eval.json, .hydra/ (the command)."""
    make_tokenizer(tmp_path / "tok")
    ckpt = tmp_path / "gpt_run" / "checkpoints" / "last"
    make_gpt(ckpt)
    record = json.loads((ckpt / "config.json").read_text())
    record["tokenizer_path"] = str(tmp_path / "tok")  # what train_gpt.py records
    (ckpt / "config.json").write_text(json.dumps(record))
    (tmp_path / "gpt_run" / "eval.json").write_text(json.dumps(EVAL))
    hydra = tmp_path / "gpt_run" / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text(yaml.safe_dump([f"checkpoint_vae={tmp_path / 'tok'}", "gpt=tiny"]))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": "train_gpt"}}}))
    return ckpt


def test_from_a_training_run_images_come_from_one_call(run):
    pipe = vqgpt.Pipeline.from_pretrained(run)
    images = pipe(class_labels=["circle", 3], temperature=0.9, top_k=10)
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (8, 8) for i in images)
    tensors = pipe(num_images=7, output_type="pt", seed=3)  # every class in turn
    assert tensors.shape == (7, 3, 8, 8) and 0 <= tensors.min() and tensors.max() <= 1
    assert torch.equal(tensors, pipe(num_images=7, output_type="pt", seed=3))  # same arguments, same images
    labelled = pipe(class_labels=[4, 3], output_type="pt")
    assert torch.equal(labelled, pipe(class_labels=["Circle", "diagonal_stripes"], output_type="pt"))


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(top_k=0), "^top_k=0 is invalid"),
    (dict(temperature=0.0), "^temperature=0.0 is invalid"),
    (dict(class_labels=["dragon"]), "class_labels: unknown class 'dragon'"),
    (dict(class_labels=[9]), "class_labels: class index 9 is out of range; this GPT has classes 0..5"),
    (dict(accept_n=4), "accept_n=4 needs a classifier"),
    (dict(output_type="np"), "output_type='np' is not one of pil, pt"),
])
def test_bad_arguments_are_value_errors_naming_the_argument(run, kwargs, words):
    with pytest.raises(ValueError, match=words):
        vqgpt.Pipeline.from_pretrained(run)(**kwargs)


def test_save_pretrained_round_trips_with_a_model_card(run, tmp_path):
    pipe = vqgpt.Pipeline.from_pretrained(run)
    folder = pipe.save_pretrained(tmp_path / "shared")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "gpt", "pipeline.json", "tokenizer"]
    assert not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pkl"))  # safetensors + JSON only
    again = vqgpt.Pipeline.from_pretrained(folder)
    assert torch.equal(again(num_images=6, output_type="pt"), pipe(num_images=6, output_type="pt"))
    assert again.class_names == PATTERNS.class_names
    assert load_checkpoint(folder / "gpt").meta["tokenizer_hash"]  # each part is an ordinary vqgpt checkpoint
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vqgpt") and "datasets:\n- patterns" in card
    assert f"python scripts/train_gpt.py checkpoint_vae={run.parent.parent.parent / 'tok'} gpt=tiny" in card
    assert "| fid | 41.5 |" in card and "FID protocol: num_samples: 6; reference: test" in card
    assert again.save_pretrained(folder) == folder  # a saved pipeline may be replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a saved pipeline"):
        pipe.save_pretrained(tmp_path / "mine")


def test_a_pipeline_of_your_own_models_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    tokenizer = VQGAN(VQGANConfig(in_channels=1, image_size=8, channels=8, ch_mult=[1, 2], z_channels=4,
                                  embed_dim=4, quantizer=VQConfig(num_codewords=16, embedding_dim=4)))
    gpt = GPT(GPTConfig(vocab_size=16, block_size=16, num_classes=0, n_layer=1, n_head=2, n_embd=16))
    pipe = vqgpt.Pipeline(tokenizer, gpt)
    images = pipe(num_images=3, output_type="pt")
    assert images.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        pipe(class_labels=[1])
    again = vqgpt.Pipeline.from_pretrained(pipe.save_pretrained(tmp_path / "own"))
    assert torch.equal(again(num_images=3, output_type="pt"), images)


def test_a_masked_gpts_decoding_options_reach_the_sampler_and_others_are_named(run):
    torch.manual_seed(0)
    tokenizer = VQGAN(VQGANConfig(in_channels=1, image_size=8, channels=8, ch_mult=[1, 2], z_channels=4,
                                  embed_dim=4, quantizer=VQConfig(num_codewords=16, embedding_dim=4)))
    gpt = MaskGIT(GPTConfig(name="maskgit", vocab_size=16, block_size=16, num_classes=0, n_layer=1, n_head=2,
                            n_embd=16))
    pipe = vqgpt.Pipeline(tokenizer, gpt)
    one = pipe(num_images=4, output_type="pt", steps=1, confidence_noise=0.0)
    assert torch.equal(one, pipe(num_images=4, output_type="pt", steps=1, confidence_noise=0.0))
    assert not torch.equal(one, pipe(num_images=4, output_type="pt", steps=16, schedule="linear"))
    with pytest.raises(ValueError, match="^steps=0 is invalid"):
        pipe(steps=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'step'; the decoding options are steps, "):
        pipe(step=4)
    raster = vqgpt.Pipeline.from_pretrained(run)
    with pytest.raises(ValueError, match="^steps=4 is invalid: only a masked GPT"):
        raster.complete(torch.zeros(1, 3, 8, 8), [0], steps=4)
    with pytest.raises(ValueError, match="^denoising_steps=10 is invalid: only a patch GPT with the diffusion"):
        raster(denoising_steps=10)


def test_complete_keeps_the_top_half_of_pil_uint8_or_unit_images(run):
    pipe = vqgpt.Pipeline.from_pretrained(run)
    from vqgpt.data import build_dataset

    real = torch.stack([build_dataset(PATTERNS, "test", train=False)[i][0] for i in range(2)])  # [-1, 1]
    unit = (real + 1) / 2
    pils = [Image.fromarray(x.mul(255).round().byte().permute(1, 2, 0).numpy()) for x in unit]
    rows = [pipe.complete(images, [0, 1], num_completions=2, output_type="pt")
            for images in (unit, pils, unit.mul(255).round().byte(), real)]
    assert rows[0].shape == (2 * 4, 3, 8, 8)
    for other in rows[1:]:
        torch.testing.assert_close(other, rows[0], atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match=r"float images span \[-2.\d+, 2.\d+\]: pass \[0, 1\] or \[-1, 1\]"):
        pipe.complete(real * 3, [0, 1])


def test_edit_keeps_the_pixels_outside_the_region_and_takes_a_pil_mask(run):
    pipe = vqgpt.Pipeline.from_pretrained(run)
    from vqgpt.data import build_dataset

    real = torch.stack([build_dataset(PATTERNS, "test", train=False)[i][0] for i in range(2)])
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[4:, :] = True  # the bottom half: token rows 2 and 3 of the 4x4 grid
    edits = pipe.edit(real, region, "circle", num_variations=3, output_type="pt")
    assert edits.shape == (6, 3, 8, 8)
    tokens = pipe.tokenizer.tokenize(real)
    kept = ((pipe.tokenizer.decode_tokens(tokens) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(edits.view(2, 3, 3, 8, 8)[..., :4, :], kept[:, None, :, :4].expand(-1, 3, -1, -1, -1))
    mask = Image.fromarray((region.numpy() * 255).astype("uint8"))
    assert torch.equal(pipe.edit(real, mask, "circle", num_variations=3, output_type="pt"), edits)
    with pytest.raises(ValueError, match=r"a region of \(4, 4\): this tokenizer takes 8x8"):
        pipe.edit(real, region[:4, :4])


def hub_cache(tmp_path, repo_id: str, folder) -> None:
    """A Hub cache holding `folder` as the main revision of `repo_id` (the layout huggingface_hub reads)."""
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_id_loads_from_the_cache_offline(run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub_cache(tmp_path, "me/fashion-gpt", vqgpt.Pipeline.from_pretrained(run).save_pretrained(tmp_path / "saved"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = vqgpt.Pipeline.from_pretrained("me/fashion-gpt")
    assert torch.equal(pipe(output_type="pt"), vqgpt.Pipeline.from_pretrained(run)(output_type="pt"))
    with pytest.raises(UserError, match="not in the Hugging Face cache and the Hub cannot be reached"):
        vqgpt.Pipeline.from_pretrained("me/not-downloaded")
    with pytest.raises(UserError, match="neither a directory here, nor a Hub repository id|not a directory here"):
        vqgpt.Pipeline.from_pretrained("no such/folder")


def test_push_to_hub_uploads_the_saved_folder(run, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), commit_message))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = vqgpt.Pipeline.from_pretrained(run).push_to_hub("me/fashion-gpt", private=True, token="t")
    assert url == "https://huggingface.co/me/fashion-gpt/commit/1"
    assert calls == [("token", "t"), ("create", "me/fashion-gpt", True, True),
                     ("upload", "me/fashion-gpt", ["README.md", "gpt", "pipeline.json", "tokenizer"],
                      "Upload vqgpt pipeline")]


def test_the_readme_snippet_runs(run, tmp_path, monkeypatch):
    section = (ROOT / "README.md").read_text().split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    code = code.replace('"outputs/demo/gpt/checkpoints/last"', repr(str(run)))
    code = code.replace('class_labels=["Sneaker", 3]', 'class_labels=["circle", 3]')  # the tiny run's classes
    code = code.replace("top_k=100", "top_k=10")  # and its 32 codes
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["images"]) == 2 and (tmp_path / "fashion-gpt" / "pipeline.json").is_file()
