"""Token cache: built once from a tokenizer checkpoint, equal to tokenizing on the fly, refused for another one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from vqgpt.checkpoint import save_checkpoint
from vqgpt.config import DatasetConfig, QuantizerConfig, TokenizerConfig
from vqgpt.data import build_dataset, dataset_info
from vqgpt.errors import UserError
from vqgpt.token_cache import HEADER, TokenDataset, prepare_token_cache, read_header
from vqgpt.vqgan import VQGAN

DATA = DatasetConfig(name="patterns", image_size=8, channels=3, num_classes=6, num_train=24, num_test=8)


def make_tokenizer(path, seed: int = 0, data: DatasetConfig = DATA) -> VQGAN:
    torch.manual_seed(seed)
    cfg = TokenizerConfig(in_channels=data.channels, image_size=data.image_size, channels=8, ch_mult=[1, 2],
                          num_res_blocks=1, z_channels=8, embed_dim=4,
                          quantizer=QuantizerConfig(num_codewords=32, embedding_dim=4))
    model = VQGAN(cfg).eval()
    meta = {**dataset_info(data), "codebook_size": 32, "latent_grid": list(model.latent_grid),
            "data_config": dataclasses.asdict(data)}
    save_checkpoint(path, model, stage="tokenizer", arch="vqgan", meta=meta, step=0)
    return model


def test_cache_equals_tokenizing_on_the_fly(tmp_path):
    model = make_tokenizer(tmp_path / "tok")
    cache, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    assert cache.parent == tmp_path and header["grid"] == [4, 4] and header["codebook_size"] == 32
    assert cache.name == f"token_cache_patterns_8_{header['tokenizer_hash'][:8]}"
    assert header["splits"] == {"train": 24, "test": 8}
    for split in ("train", "test"):
        images = torch.stack([img for img, _ in build_dataset(DATA, split, train=False)])
        labels = [label for _, label in build_dataset(DATA, split, train=False)]
        tokens = TokenDataset(cache, split)
        with torch.no_grad():
            expected = model.tokenize(images).reshape(len(images), -1)
        assert torch.equal(torch.stack([tokens[i][0] for i in range(len(tokens))]), expected)
        assert [tokens[i][1] for i in range(len(tokens))] == labels
    assert np.load(cache / "train_tokens.npy", mmap_mode="r").dtype == np.uint16


def test_hflip_copies_follow_all_originals(tmp_path):
    model = make_tokenizer(tmp_path / "tok")
    cache, header = prepare_token_cache(str(tmp_path / "tok"), None, str(tmp_path / "c"), hflip_copies=True)
    assert header["splits"]["train"] == 48 and header["splits"]["test"] == 8
    image, _ = build_dataset(DATA, "train", train=False)[0]
    with torch.no_grad():
        flipped = model.tokenize(image.flip(-1)[None]).flatten()
    assert torch.equal(TokenDataset(cache, "train")[24][0], flipped)


def test_retrained_tokenizer_in_the_same_place_gets_its_own_default_cache(tmp_path):
    make_tokenizer(tmp_path / "tok", seed=0)
    first, _ = prepare_token_cache(str(tmp_path / "tok"), None, None)
    make_tokenizer(tmp_path / "tok", seed=1)  # retrained, saved over the old checkpoint
    second, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    assert second != first and read_header(first)["tokenizer_hash"] != header["tokenizer_hash"]


def test_cache_from_another_tokenizer_is_refused(tmp_path):
    make_tokenizer(tmp_path / "a", seed=0)
    make_tokenizer(tmp_path / "b", seed=1)
    cache, _ = prepare_token_cache(str(tmp_path / "a"), None, str(tmp_path / "cache"))
    before = (cache / "train_tokens.npy").read_bytes()
    with pytest.raises(UserError, match="made by another tokenizer") as err:
        prepare_token_cache(str(tmp_path / "b"), None, str(cache))
    assert "\n" not in str(err.value) and str(cache) in str(err.value)
    assert (cache / "train_tokens.npy").read_bytes() == before  # nothing overwritten


def test_wrong_data_size_and_missing_cache_messages(tmp_path):
    make_tokenizer(tmp_path / "tok")
    with pytest.raises(UserError, match="tokenizer .* was trained on 3x8px"):
        prepare_token_cache(str(tmp_path / "tok"), dataclasses.replace(DATA, image_size=16), None)
    with pytest.raises(UserError, match="not a token cache"):
        read_header(tmp_path / "nowhere")
    with pytest.raises(UserError, match="checkpoint_vae is not set"):
        prepare_token_cache(None, None, None)


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    make_tokenizer(tmp_path / "tok")
    import vqgpt.token_cache as tc

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(tc.np, "save", boom)
    with pytest.raises(RuntimeError):
        prepare_token_cache(str(tmp_path / "tok"), None, str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temp dir left behind
    monkeypatch.undo()
    cache, header = prepare_token_cache(str(tmp_path / "tok"), None, str(tmp_path / "cache"))
    assert json.loads((cache / HEADER).read_text()) == header
