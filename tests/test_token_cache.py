"""Token cache: built once from a tokenizer checkpoint, equal to tokenizing on the fly, refused for another one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import PATTERNS
from conftest import make_tokenizer as make_tiny_tokenizer

from vqgpt.config import DatasetConfig
from vqgpt.data import build_dataset
from vqgpt.data.token_cache import HEADER, TokenDataset, default_cache_dir, prepare_token_cache, read_header
from vqgpt.errors import UserError

DATA = dataclasses.replace(PATTERNS, class_names=None)


def make_tokenizer(path, seed: int = 0, data: DatasetConfig = DATA):
    return make_tiny_tokenizer(path, data=data, seed=seed)


def test_cache_equals_tokenizing_on_the_fly(tmp_path, private_cache):
    model = make_tokenizer(tmp_path / "tok")
    cache, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    assert cache.parent == private_cache / "tokens" and header["grid"] == [4, 4] and header["codebook_size"] == 32
    assert cache.name.startswith("patterns_8_") and header["data"]["num_classes"] == 6
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
    import vqgpt.data.token_cache as tc

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


def test_default_cache_is_keyed_on_the_whole_data_config(tmp_path):
    """Regression: the cache name ignored the generator's sizes (a 24-image cache served a request of 12)."""
    make_tokenizer(tmp_path / "tok")
    small = dataclasses.replace(DATA, num_train=12)
    first, _ = prepare_token_cache(str(tmp_path / "tok"), None, None)
    second, header = prepare_token_cache(str(tmp_path / "tok"), small, None)
    assert second != first and header["splits"]["train"] == 12
    for change in (dict(seed=1), dict(resize="pad"), dict(root=str(tmp_path))):
        assert default_cache_dir(tmp_path / "tok", dataclasses.replace(DATA, **change), False) != first


def test_a_stale_cache_is_rebuilt_by_default_and_refused_where_named(tmp_path, caplog):
    make_tokenizer(tmp_path / "tok")
    named, _ = prepare_token_cache(str(tmp_path / "tok"), None, str(tmp_path / "named"))
    with pytest.raises(UserError, match=r"does not match this request \(dataset.num_train=24 there, 12 asked"):
        prepare_token_cache(str(tmp_path / "tok"), dataclasses.replace(DATA, num_train=12), str(named))
    default, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    header_file = default / HEADER
    stale = json.loads(header_file.read_text())
    stale["data_config"]["num_train"] = 99  # as if another request had written this directory
    header_file.write_text(json.dumps(stale))
    caplog.clear()
    with caplog.at_level("INFO", logger="vqgpt"):
        again, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    assert again == default and header["data_config"]["num_train"] == 24
    assert "is stale (dataset.num_train=99 there, 24 asked): rebuilding it" in caplog.text


def test_a_truncated_array_is_found_before_training(tmp_path, capsys):
    make_tokenizer(tmp_path / "tok")
    cache, _ = prepare_token_cache(str(tmp_path / "tok"), None, str(tmp_path / "named"))
    tokens = cache / "train_tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:-40])
    with pytest.raises(UserError, match="damaged") as err:
        prepare_token_cache(str(tmp_path / "tok"), None, str(cache))
    assert "\n" not in str(err.value)


def test_a_killed_build_leaves_a_temp_dir_that_the_next_build_removes(tmp_path, private_cache):
    make_tokenizer(tmp_path / "tok")
    target = default_cache_dir(tmp_path / "tok", DATA, False)
    target.parent.mkdir(parents=True, exist_ok=True)
    orphan = target.with_name(f".{target.name}.tmp-999999999")  # no such process
    orphan.mkdir()
    prepare_token_cache(str(tmp_path / "tok"), None, None)
    assert not orphan.exists() and (target / HEADER).is_file()


def write_folder(root, count: int, seed: int = 0) -> None:
    """`count` random 8x8 PNGs in two class folders under `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        path = root / ("a" if i % 2 else "b") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def test_a_folder_whose_images_changed_is_tokenized_again(tmp_path, caplog):
    """Regression: the cache key saw only the data config, so 80 -> 120 images per folder trained on the old tokens."""
    write_folder(tmp_path / "imgs", 20)
    folder = DatasetConfig(name="folder", root=str(tmp_path / "imgs"), image_size=8, channels=3, num_classes=2)
    make_tokenizer(tmp_path / "tok", data=folder)
    cache, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    before = header["splits"]["train"] + header["splits"]["test"]
    assert before == 20 and header["files"]["train"]["files"] == header["splits"]["train"]

    write_folder(tmp_path / "imgs", 30, seed=1)  # 10 new images, and new pixels in the old 20
    with caplog.at_level("INFO", logger="vqgpt"):
        again, header = prepare_token_cache(str(tmp_path / "tok"), None, None)
    assert again == cache and header["splits"]["train"] + header["splits"]["test"] == 30
    assert "image files changed" in caplog.text
    rows = TokenDataset(again, "train")
    tokenizer = make_tokenizer(tmp_path / "tok2", data=folder)  # the same weights (seed 0): the same codes
    first = build_dataset(folder, "train", train=False)[0][0]
    assert torch.equal(rows[0][0], tokenizer.tokenize(first[None]).flatten())

    named, _ = prepare_token_cache(str(tmp_path / "tok"), None, str(tmp_path / "named"))
    (tmp_path / "imgs" / "a" / "001.png").unlink()
    with pytest.raises(UserError, match="image files changed .* delete it to rebuild it"):
        prepare_token_cache(str(tmp_path / "tok"), None, str(named))


def test_an_unchanged_folder_reuses_its_cache(tmp_path, caplog):
    write_folder(tmp_path / "imgs", 12)
    folder = DatasetConfig(name="folder", root=str(tmp_path / "imgs"), image_size=8, channels=3, num_classes=2)
    make_tokenizer(tmp_path / "tok", data=folder)
    cache, _ = prepare_token_cache(str(tmp_path / "tok"), None, None)
    stamp = (cache / "train_tokens.npy").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="vqgpt"):
        assert prepare_token_cache(str(tmp_path / "tok"), None, None)[0] == cache
    assert (cache / "train_tokens.npy").stat().st_mtime_ns == stamp and caplog.text == ""
