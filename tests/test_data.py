"""Datasets: every loader on tiny files in its real on-disk format, the transform's geometry, clear errors."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import pickle
import socket
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from vqgpt import safe_pickle
from vqgpt.config import CONFIG_DIR, DatasetConfig, InspectDataRun
from vqgpt.data import DATASETS, build_dataset, dataset_info, read_idx
from vqgpt.data import datasets as data
from vqgpt.data.inspect import inspect_dataset
from vqgpt.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parent.parent


class Offline:
    """A torchvision.datasets stand-in whose every dataset class fails as a download does offline."""

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> ({name})")

        return fail


@pytest.fixture(autouse=True)
def no_real_places(tmp_path, monkeypatch):
    """Point ~, ./ and vqgpt's cache at empty folders, so only the files a test writes can be found; and
    cut the network, so the default download (dataset.download=null) fails here as it does offline."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VQGPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(data, "_tv", Offline)

    def no_network(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # medmnist downloads with urllib directly
    monkeypatch.setattr(socket.socket, "connect", no_network)


def cfg(name: str, **kw) -> DatasetConfig:
    kw.setdefault("num_classes", None)  # from the data's class names
    return DatasetConfig(name=name, **kw)


def fake_tv(monkeypatch, **classes) -> list[str]:
    """Replace torchvision.datasets by `classes` (name -> files writer(root)); returns the roots called."""
    calls = []

    def dataset_class(write):
        def make(root: str, *args, **kwargs):
            assert kwargs.get("download") is True
            calls.append(root)
            write(Path(root))

        return make

    fakes = {name: dataset_class(write) for name, write in classes.items()}
    monkeypatch.setattr(data, "_tv", lambda: type("tv", (), fakes))
    return calls


def check(ds, c: DatasetConfig, n: int | None = None, labels: list[int] | None = None) -> None:
    """Every item: float32 (C, H, W) in [-1, 1] and an int label (optionally the expected ones)."""
    if n is not None:
        assert len(ds) == n
    got = []
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (c.channels, c.image_size, c.image_size)
        assert x.min() >= -1 and x.max() <= 1
        assert type(y) is int
        got.append(y)
    if labels is not None:
        assert got == labels


def write_image(path: Path, size=(8, 8), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Registry, config files, bad configs


def test_registry_matches_the_config_files():
    expected = {"mnist", "fashionmnist", "fashionmnist_small", "cifar10", "cifar100", "svhn", "celeba", "dtd",
                "places365", "tinyimagenet", "imagenet", "stanforddogs", "chestmnist", "bloodmnist",
                "dermamnist", "octmnist", "tissuemnist", "pneumoniamnist", "retinamnist", "folder",
                "patterns"}
    assert set(DATASETS) == expected
    assert {p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml")} == expected


@pytest.mark.parametrize("kw,words", [
    (dict(resize="stretch"), "dataset.resize"),
    (dict(channels=2), "dataset.channels"),
    (dict(image_size=0), "dataset.image_size"),
    (dict(medmnist_size=100), "dataset.medmnist_size"),
    (dict(name="imagenette"), "unknown dataset"),
    (dict(num_classes=0), "dataset.num_classes must be at least 1"),
    (dict(num_classes=6, class_names=["a", "b"]), r"class_names has 2 names but dataset.num_classes=6"),
])
def test_bad_config_is_one_line_user_error(kw, words):
    c = cfg(kw.pop("name", "patterns"), **kw)
    with pytest.raises(UserError, match=words) as err:
        build_dataset(c, "train")
    assert "\n" not in str(err.value)


def test_bad_split_is_refused():
    with pytest.raises(UserError, match="split must be train, val or test"):
        build_dataset(cfg("patterns"), "holdout")
    with pytest.raises(UserError, match=r"val split is empty; set dataset.val_size"):
        build_dataset(cfg("patterns"), "val")
    with pytest.raises(UserError, match=r"val_size=2048 leaves no training images"):
        build_dataset(cfg("patterns", val_size=2048), "val")


def test_val_split_is_a_fixed_per_class_share_of_train_and_leaves_test_alone():
    c = cfg("fashionmnist_small", image_size=28, channels=1, val_size=1000, num_classes=10)
    full, test = build_dataset(cfg("fashionmnist_small", image_size=28, channels=1, num_classes=10), "train"), \
        build_dataset(c, "test")
    train, val = build_dataset(c, "train"), build_dataset(c, "val")
    assert len(val) == 1000 and len(train) == len(full) - 1000
    assert np.bincount(val.labels).tolist() == [100] * 10  # the same share of every class
    assert not set(val.indices) & set(train.indices)  # a hold-out, not a copy
    assert sorted(val.indices + train.indices) == list(range(len(full)))
    i = val.indices[3]
    assert torch.equal(val[3][0], full[i][0]) and val[3][1] == full[i][1]
    assert len(test) == len(build_dataset(cfg("fashionmnist_small", image_size=28, channels=1, num_classes=10),
                                          "test"))
    assert build_dataset(c, "val").indices == val.indices  # the same images in every run (no seed of the run's)
    assert data.eval_split(c) == "val" and data.eval_split(cfg("patterns")) == "test"


def test_val_size_keys_only_the_caches_it_changes():
    c, held = cfg("patterns"), cfg("patterns", val_size=100)
    assert data.config_facts(c) == data.config_facts(held, "test")  # the test split is unchanged
    assert data.config_facts(c) != data.config_facts(held) and "val_size" not in data.config_facts(c)


def test_val_split_of_a_folder_keeps_its_file_list(tmp_path):
    for cls in ("a", "b"):
        for i in range(20):
            write_image(tmp_path / "f" / cls / f"{i:02d}.png", (8, 8))
    c = cfg("folder", root=str(tmp_path / "f"), image_size=8, num_classes=2, val_size=4)
    train, val = build_dataset(c, "train"), build_dataset(c, "val")
    assert len(val.paths) == 4 and not set(val.paths) & set(train.paths)
    assert data.files_fingerprint(val) != data.files_fingerprint(train)


def test_the_held_out_digits_folder_reads_as_a_user_folder(tmp_path):
    """benchmarks/digits_folder.py (the held-out check's data) writes what dataset=folder takes: train/ and test/
    of 10 class sub-folders, 32x32 grey PNGs, every fifth image of a class in test."""
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_folder", ROOT / "benchmarks" / "digits_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.write_folder(tmp_path / "digits") == {"train": 1442, "test": 355}
    c = cfg("folder", root=str(tmp_path / "digits"), image_size=32, channels=1, resize="pad")
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert (len(train), len(test)) == (1442, 355) and not set(train.paths) & set(test.paths)
    assert dataset_info(c, train)["class_names"] == [str(d) for d in range(10)]
    image, label = test[0]
    assert image.shape == (1, 32, 32) and label == 0 and image.min() < -0.9 and image.max() > 0.5


# ----------------------------------------------------------------------------------------------------------
# The transform


def test_pad_centres_the_image_in_black():
    t = data.ImageTransform("t", 32, 3, "pad")
    x = t(Image.new("RGB", (20, 10), (255, 255, 255)))  # 20 wide, 10 high
    assert x.shape == (3, 32, 32)
    assert (x[:, 11:21, 6:26] == 1).all()  # the image, centred
    assert (x[:, :11] == -1).all() and (x[:, 21:] == -1).all()
    assert (x[:, :, :6] == -1).all() and (x[:, :, 26:] == -1).all()


def test_pad_refuses_a_larger_image_and_points_to_crop():
    with pytest.raises(UserError, match="resize=crop"):
        data.ImageTransform("t", 16, 3, "pad")(Image.new("RGB", (20, 10)))


def test_crop_resizes_the_shorter_side_then_takes_the_centre():
    img = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high, black
    img[:, :8] = 255  # a white band on the far left: outside the central square once cropped
    x = data.ImageTransform("t", 16, 3, "crop")(Image.fromarray(img))
    assert x.shape == (3, 16, 16)
    assert x.max() < -0.9  # no white left: the band was cropped away
    up = data.ImageTransform("t", 64, 3, "crop")(Image.new("RGB", (20, 30), (255, 0, 0)))  # upsampling too
    assert up.shape == (3, 64, 64) and torch.allclose(up[0], torch.ones(64, 64))


def test_channel_conversion():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    gray = data.ImageTransform("t", 8, 1)(red)
    assert gray.shape == (1, 8, 8)
    assert torch.allclose(gray, torch.full_like(gray, 76 / 127.5 - 1))  # ITU-R 601 luma of pure red: 76
    rgb = data.ImageTransform("t", 8, 3)(Image.new("L", (8, 8), 100))
    assert rgb.shape == (3, 8, 8) and (rgb == rgb[0]).all()
    rgba = data.ImageTransform("t", 8, 3)(Image.new("RGBA", (8, 8), (0, 255, 0, 128)))
    assert rgba.shape == (3, 8, 8)


def test_hflip_only_on_the_training_split(tmp_path):
    root = tmp_path / "flip"
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = 255  # white left half
    for i in range(3):
        Image.fromarray(img).save(write_image(root / "train" / f"{i}.png"))
        Image.fromarray(img).save(write_image(root / "test" / f"{i}.png"))
    c = cfg("folder", root=str(root), image_size=8, hflip=True)
    left_white = lambda ds: {bool(ds[0][0][0, 0, 0] > 0) for _ in range(40)}
    torch.manual_seed(0)
    assert left_white(build_dataset(c, "train")) == {True, False}
    assert left_white(build_dataset(c, "train", train=False)) == {True}
    assert left_white(build_dataset(c, "test")) == {True}


# ----------------------------------------------------------------------------------------------------------
# Generated and bundled data


def test_patterns_are_deterministic_by_seed():
    c = cfg("patterns", image_size=16, num_train=12, num_test=6, num_classes=6)
    a, b = build_dataset(c, "train"), build_dataset(c, "train")
    check(a, c, 12, labels=[i % 6 for i in range(12)])
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(12))
    other = build_dataset(cfg("patterns", image_size=16, num_train=12, num_classes=6, seed=1), "train")
    assert not all(torch.equal(a[i][0], other[i][0]) for i in range(12))
    test = build_dataset(c, "test")
    assert len(test) == 6 and not torch.equal(a[0][0], test[0][0])
    assert a.class_names == data.PATTERN_CLASSES and len(set(data.PATTERN_CLASSES)) >= 4
    gray = cfg("patterns", image_size=16, channels=1, num_train=4, num_classes=6)
    check(build_dataset(gray, "train"), gray, 4)


def test_patterns_through_a_dataloader():
    c = cfg("patterns", image_size=16, num_train=8, num_classes=6)
    x, y = next(iter(torch.utils.data.DataLoader(build_dataset(c, "train"), batch_size=8)))
    assert x.shape == (8, 3, 16, 16) and y.tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def test_fashionmnist_small_is_bundled_and_pads_to_32():
    c = cfg("fashionmnist_small", image_size=32, channels=1, resize="pad", num_classes=10)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert (len(train), len(test)) == (10000, 2000)
    x, y = train[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10
    assert (x[:, :2] == -1).all() and (x[:, :, -2:] == -1).all()  # the 2-pixel black border


def test_too_few_classes_in_the_config_is_caught_at_build():
    with pytest.raises(UserError, match="set dataset.num_classes=10"):
        build_dataset(cfg("fashionmnist_small", channels=1, image_size=28, num_classes=5), "test")


# ----------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: idx files


def write_idx(path: Path, array: np.ndarray) -> Path:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    raw = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_mnist(folder: Path, gz: bool, n=(5, 3)) -> None:
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    for prefix, count in zip(("train", "t10k"), n, strict=True):
        images = rng.integers(0, 256, (count, 28, 28), np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(count, dtype=np.uint8) % 10)


def test_read_idx_round_trip_plain_and_gz(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", a)), a)
    b = np.array([1, -2, 70000], dtype=">i4")
    out = read_idx(write_idx(tmp_path / "b-idx1-ubyte", b))
    assert out.tolist() == [1, -2, 70000] and out.dtype.isnative


def test_read_idx_refuses_bad_files(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(UserError, match="not an idx file"):
        read_idx(tmp_path / "junk")


@pytest.mark.parametrize("layout,gz", [("", True), ("MNIST/raw", False)])
def test_mnist_flat_and_torchvision_layouts(tmp_path, layout, gz):
    write_mnist(tmp_path / "mnist" / layout, gz)
    c = cfg("mnist", root=str(tmp_path / "mnist"), image_size=28, channels=1, num_classes=10)
    check(build_dataset(c, "train"), c, 5, labels=[0, 1, 2, 3, 4])
    check(build_dataset(c, "test"), c, 3, labels=[0, 1, 2])


def test_fashionmnist_found_in_dot_data(tmp_path):
    write_mnist(tmp_path / "cwd" / "data" / "fashionmnist" / "FashionMNIST" / "raw", gz=True)
    c = cfg("fashionmnist", image_size=32, channels=1, resize="pad", num_classes=10)
    check(build_dataset(c, "test"), c, 3)


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashionmnist_from_the_debian_package():
    c = cfg("fashionmnist", image_size=28, channels=1, num_classes=10)
    ds = build_dataset(c, "test")
    assert len(ds) == 10000 and sorted(set(ds.labels.tolist())) == list(range(10))
    check(torch.utils.data.Subset(ds, range(4)), c, 4)


def test_not_found_is_one_line_naming_dataset_places_and_fix(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        build_dataset(cfg("mnist", channels=1, image_size=28, download=False), "train")
    msg = str(err.value)
    assert "\n" not in msg and "mnist not found" in msg
    assert str(tmp_path / "cwd" / "data" / "mnist") in msg and str(tmp_path / "cache" / "data" / "mnist") in msg
    assert "dataset.download=false" in msg and "dataset.download=true" in msg and "dataset.root=" in msg

    monkeypatch.setitem(data.SYSTEM_PLACES, "fashionmnist", [str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match=r"fashionmnist not found: looked in .*nowhere.*apt-get install"):
        build_dataset(cfg("fashionmnist", root=str(tmp_path), channels=1), "train")

    with pytest.raises(UserError, match=r"imagenet not found: looked in .*by hand.*train/<wnid>/") as err:
        build_dataset(cfg("imagenet"), "test")
    assert "download=true" not in str(err.value)  # nothing to download ImageNet with: do not suggest it


# ----------------------------------------------------------------------------------------------------------
# CIFAR pickles and the safe unpickler


def cifar_batch(labels: list[int], key: str = "labels") -> dict:
    """A batch like the real files: rows of 3072 bytes = the R, G, B planes of a 32x32 image."""
    rows = np.zeros((len(labels), 3, 1024), np.uint8)
    rows[:, 0] = 255  # pure red
    return {"batch_label": "testing batch 1 of 1", key: labels, "data": rows.reshape(len(labels), 3072),
            "filenames": [f"img_{i}.png" for i in range(len(labels))]}


def dump(obj, path: Path, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)  # 2 = the real (Python 2) files' protocol


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        dump(cifar_batch([i, 0]), folder / f"data_batch_{i}", protocol)
    dump(cifar_batch([9, 3, 3]), folder / "test_batch", protocol)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump({"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072}, folder / "batches.meta", protocol)
    c = cfg("cifar10", root=str(tmp_path), image_size=32, num_classes=10)
    train = build_dataset(c, "train")
    check(train, c, 10, labels=[1, 0, 2, 0, 3, 0, 4, 0, 5, 0])
    x, _ = train[0]
    assert (x[0] == 1).all() and (x[1:] == -1).all()  # planes read as R, G, B
    assert train.class_names == names
    check(build_dataset(c, "test"), c, 3, labels=[9, 3, 3])


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "data" / "cifar-100-python"
    for split, labels in (("train", [99, 0, 5]), ("test", [42])):
        batch = cifar_batch(labels, key="fine_labels")
        batch["coarse_labels"] = [0] * len(labels)
        dump(batch, folder / split)
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}
    dump(meta, folder / "meta")
    c = cfg("cifar100", root=str(tmp_path / "data"), image_size=16, channels=1, num_classes=100)
    train = build_dataset(c, "train")
    check(train, c, 3, labels=[99, 0, 5])
    assert len(train.class_names) == 100
    check(build_dataset(c, "test"), c, 1, labels=[42])


class Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_pickle_refuses_code_without_running_it(tmp_path):
    marker, bad = tmp_path / "pwned", tmp_path / "evil.pkl"
    dump({"data": np.zeros(3), "x": Payload(marker)}, bad, protocol=4)
    with pytest.raises(UserError, match=r"refusing to unpickle .*evil\.pkl.*system") as err:
        safe_pickle.load(bad)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_safe_pickle_refuses_other_classes_and_garbage(tmp_path):
    from collections import OrderedDict

    dump(OrderedDict(a=1), tmp_path / "od.pkl")
    with pytest.raises(UserError, match="OrderedDict"):
        safe_pickle.load(tmp_path / "od.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x02not really")
    with pytest.raises(UserError, match="junk.pkl"):
        safe_pickle.load(tmp_path / "junk.pkl")
    ok = {"a": [1, 2.5, "s", b"b", (None, True)], "s": {1, 2}, "arr": np.arange(6, dtype=">i2").reshape(2, 3)}
    dump(ok, tmp_path / "ok.pkl")
    back = safe_pickle.load(tmp_path / "ok.pkl")
    assert back["a"] == ok["a"] and back["s"] == ok["s"] and np.array_equal(back["arr"], ok["arr"])


# np.array([1, 2, 255], np.uint8) as Python 2 + numpy 1 wrote it (the real CIFAR files): numpy.core names,
# and the raw buffer as a Python 2 str (SHORT_BINSTRING), which only encoding="latin1" turns back into bytes.
PY2_ARRAY = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02"
             b"U\x01bq\x03\x87q\x04Rq\x05(K\x01K\x03\x85q\x06cnumpy\ndtype\nq\x07U\x02u1q\x08K\x00K\x01\x87"
             b"q\x09Rq\x0a(K\x03U\x01|q\x0bNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0cb\x89"
             b"U\x03\x01\x02\xfftq\x0db.")


def test_safe_pickle_reads_python2_numpy_pickles_without_warnings(tmp_path):
    (tmp_path / "py2.pkl").write_bytes(PY2_ARRAY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns on numpy.core imports: we map them to numpy._core
        a = safe_pickle.load(tmp_path / "py2.pkl")
    assert a.dtype == np.uint8 and a.tolist() == [1, 2, 255]


def test_cifar_batch_with_a_payload_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump(cifar_batch([0]), folder / name)
    meta = {"label_names": [str(i) for i in range(10)], "x": Payload(tmp_path / "pwned")}
    dump(meta, folder / "batches.meta")
    with pytest.raises(UserError, match="batches.meta"):
        build_dataset(cfg("cifar10", root=str(tmp_path)), "test")
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------------------
# .mat files: SVHN, Stanford Dogs


def test_svhn_label_10_is_digit_0(tmp_path):
    for split, y in (("train", [10, 1, 9]), ("test", [3, 10])):
        x = np.zeros((32, 32, 3, len(y)), np.uint8)  # the real files are (H, W, C, N)
        x[:, :, 2] = 255  # blue
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(y, np.uint8)[:, None]})
    c = cfg("svhn", root=str(tmp_path), image_size=32, num_classes=10)
    train = build_dataset(c, "train")
    check(train, c, 3, labels=[0, 1, 9])
    assert (train[0][0][2] == 1).all() and (train[0][0][:2] == -1).all()
    check(build_dataset(c, "test"), c, 2, labels=[3, 0])


def test_stanforddogs(tmp_path):
    root = tmp_path / "dogs"
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    files = {"train": [f"{folders[0]}/n02085620_1.jpg", f"{folders[1]}/n02085782_1.jpg",
                       f"{folders[1]}/n02085782_2.jpg"],
             "test": [f"{folders[0]}/n02085620_2.jpg"]}
    for split, rel in files.items():
        for r in rel:
            write_image(root / "Images" / r, (12, 10))
        labels = np.array([[folders.index(r.split("/")[0]) + 1] for r in rel], np.uint8)  # 1-based, as real
        scipy.io.savemat(root / f"{split}_list.mat", {
            "file_list": np.array([[r] for r in rel], dtype=object),  # a cell array, like the real
            "annotation_list": np.array([[r[:-4]] for r in rel], dtype=object), "labels": labels})
    assert isinstance(scipy.io.loadmat(root / "train_list.mat")["file_list"][0, 0], np.ndarray)
    scipy.io.savemat(tmp_path / "wrong.mat", {"x": np.zeros(1)})
    with pytest.raises(UserError, match=r"wrong\.mat lacks the variable\(s\) file_list"):
        data._loadmat(tmp_path / "wrong.mat", "file_list")
    c = cfg("stanforddogs", root=str(root), image_size=8)
    train = build_dataset(c, "train")
    check(train, c, 3, labels=[0, 1, 1])
    assert train.class_names == ["Chihuahua", "Japanese spaniel"]
    check(build_dataset(c, "test"), c, 1, labels=[0])


# ----------------------------------------------------------------------------------------------------------
# Image trees: CelebA, DTD, Places365, Tiny ImageNet, ImageNet


def test_celeba_partition(tmp_path):
    folder = tmp_path / "celeba"
    for i in range(1, 5):
        write_image(folder / "img_align_celeba" / f"{i:06d}.jpg", (18, 22))  # 178x218 in the real data
    (folder / "list_eval_partition.txt").write_text("".join(f"00000{i}.jpg {p}\n" for i, p in
                                                             ((1, 0), (2, 0), (3, 1), (4, 2))))
    c = cfg("celeba", root=str(tmp_path), image_size=16, num_classes=1)
    check(build_dataset(c, "train"), c, 2, labels=[0, 0])
    test = build_dataset(c, "test")
    check(test, c, 1, labels=[0])
    assert test.paths[0].endswith("000004.jpg")


def test_dtd_split_files(tmp_path):
    folder = tmp_path / "dtd" / "dtd"  # where torchvision's download puts it
    for cls in ("banded", "blotchy", "zigzagged"):
        for i in (1, 2):
            write_image(folder / "images" / cls / f"{cls}_000{i}.jpg", (12, 9))
    (folder / "labels").mkdir()
    (folder / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\nzigzagged/zigzagged_0001.jpg\n")
    (folder / "labels" / "test1.txt").write_text("blotchy/blotchy_0002.jpg\n")
    c = cfg("dtd", root=str(tmp_path), image_size=8, num_classes=3)
    train = build_dataset(c, "train")
    check(train, c, 2, labels=[0, 2])
    assert train.class_names == ["banded", "blotchy", "zigzagged"]
    check(build_dataset(c, "test"), c, 1, labels=[1])


def test_places365_torchvision_layout(tmp_path):
    (tmp_path / "categories_places365.txt").write_text(
        "/a/airfield 0\n/a/apartment_building/outdoor 1\n/b/bamboo_forest 2\n")
    (tmp_path / "places365_train_standard.txt").write_text(
        "/a/airfield/00000001.jpg 0\n/b/bamboo_forest/00000001.jpg 2\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 1\n")
    write_image(tmp_path / "data_256_standard" / "a" / "airfield" / "00000001.jpg", (16, 16))
    write_image(tmp_path / "data_256_standard" / "b" / "bamboo_forest" / "00000001.jpg", (16, 16))
    write_image(tmp_path / "val_256" / "Places365_val_00000001.jpg", (16, 16))
    c = cfg("places365", root=str(tmp_path), image_size=8)
    train = build_dataset(c, "train")
    check(train, c, 2, labels=[0, 2])
    assert train.class_names == ["airfield", "apartment_building/outdoor", "bamboo_forest"]
    check(build_dataset(c, "test"), c, 1, labels=[1])


def test_tinyimagenet_train_and_val(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("n03444034\nn01443537\n")  # not sorted, like the real file
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn03444034\tgo-kart\n")
    for wnid in ("n03444034", "n01443537"):
        for i in (0, 1):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (16, 16))
    write_image(folder / "val" / "images" / "val_0.JPEG", (16, 16))
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn03444034\t0\t32\t44\t62\n")
    c = cfg("tinyimagenet", root=str(tmp_path), image_size=16)
    train = build_dataset(c, "train")
    check(train, c, 4, labels=[0, 0, 1, 1])
    assert train.class_names == ["goldfish", "go-kart"]
    test = build_dataset(c, "test")
    check(test, c, 1, labels=[1])
    assert dataset_info(c, test)["class_names"] == ["goldfish", "go-kart"]


def test_imagenet_folders(tmp_path):
    for split, wnids in (("train", ("n01440764", "n01443537")), ("val", ("n01443537",))):
        for wnid in wnids:
            write_image(tmp_path / split / wnid / f"{wnid}_1.JPEG", (20, 14))
    c = cfg("imagenet", root=str(tmp_path), image_size=8, num_classes=2)
    train = build_dataset(c, "train")
    check(train, c, 2, labels=[0, 1])
    test = build_dataset(c, "test")
    check(test, c, 1, labels=[1])  # val labels follow train's classes
    info = dataset_info(c, test)
    assert info["class_names"] == ["n01440764", "n01443537"] and info["num_classes"] == 2
    assert dataset_info(c) == {**info, "class_names": None}


# ----------------------------------------------------------------------------------------------------------
# MedMNIST


def write_medmnist(folder: Path, fname: str, size: int, channels: int, labels: np.ndarray) -> None:
    shape = (size, size, 3) if channels == 3 else (size, size)
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), *shape), np.uint8)
        arrays[f"{split}_labels"] = labels
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / fname, **arrays)


@pytest.mark.parametrize("flag,channels,num_classes", [("bloodmnist", 3, 8), ("pneumoniamnist", 1, 2)])
def test_medmnist_28(tmp_path, flag, channels, num_classes):
    write_medmnist(tmp_path, f"{flag}.npz", 28, channels, np.array([[1], [0], [1]], np.uint8))
    c = cfg(flag, root=str(tmp_path), image_size=28, channels=3)
    ds = build_dataset(c, "train")
    check(ds, c, 3, labels=[1, 0, 1])
    check(build_dataset(c, "test"), c, 3)
    import medmnist

    assert ds.class_names[1] == medmnist.INFO[flag]["label"]["1"]
    assert dataset_info(c, ds)["num_classes"] == num_classes


def test_medmnist_larger_size_from_image_size(tmp_path):
    write_medmnist(tmp_path / "cwd" / "data" / "medmnist", "dermamnist_64.npz", 64, 3, np.array([[6], [2]]))
    c = cfg("dermamnist", image_size=48, num_classes=7)  # smallest size >= 48 is 64: found in ./data/medmnist
    check(build_dataset(c, "train"), c, 2, labels=[6, 2])
    with pytest.raises(UserError, match=r"dermamnist not found: .*dermamnist_128\.npz"):
        build_dataset(cfg("dermamnist", medmnist_size=128, num_classes=7, download=False), "train")


def test_chestmnist_multilabel_rule(tmp_path):
    labels = np.zeros((4, 14), np.uint8)
    labels[1, 2] = 1  # effusion
    labels[2, [0, 2]] = 1  # atelectasis + effusion: the first finding wins
    labels[3, 13] = 1  # hernia
    write_medmnist(tmp_path, "chestmnist.npz", 28, 1, labels)
    c = cfg("chestmnist", root=str(tmp_path), image_size=28, channels=1, num_classes=15)
    ds = build_dataset(c, "train")
    check(ds, c, 4, labels=[0, 3, 1, 14])
    assert ds.class_names[0] == "normal" and ds.class_names[3] == "effusion" and len(ds.class_names) == 15


# ----------------------------------------------------------------------------------------------------------
# Any image folder


def test_folder_classes_and_corrupt_file(tmp_path, caplog):
    root = tmp_path / "pets"
    for cls in ("dogs", "cats"):
        for i in range(12):
            write_image(root / cls / f"{i:02d}.png", (10, 12), (i * 20, 0, 0))
    (root / "dogs" / "bad.png").write_bytes(b"not a png at all")
    c = cfg("folder", root=str(root), image_size=8, num_classes=2)
    split_of_bad = "test" if zlib.crc32(b"dogs/bad.png") % 10 == 0 else "train"  # the folder's hold-out rule
    with pytest.raises(UserError, match=r"cannot read image .*dogs/bad\.png.*skip_corrupt=true") as err:
        build_dataset(c, split_of_bad)
    assert "\n" not in str(err.value)

    c.skip_corrupt = True
    with caplog.at_level(logging.WARNING, logger="vqgpt.data"):
        train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert "skipped 1 unreadable image" in caplog.text
    assert len(train) + len(test) == 24 and len(test) >= 1
    assert not set(train.paths) & set(test.paths)  # a hold-out, not a copy
    assert train.class_names == ["cats", "dogs"]
    check(train, c)
    again = build_dataset(c, "test")
    assert again.paths == test.paths  # deterministic

    with pytest.raises(UserError, match="set dataset.num_classes=2"):
        build_dataset(cfg("folder", root=str(root), num_classes=1, skip_corrupt=True), "train")


def test_folder_flat_and_with_train_test(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        write_image(flat / f"{i}.jpg", (8, 8))
    c = cfg("folder", root=str(flat), image_size=8, num_classes=1)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert len(train) + len(test) == 3 and len(test) >= 1  # at least one held out
    assert train.class_names == ["flat"]

    split = tmp_path / "split"
    for s, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                write_image(split / s / cls / f"{i}.png", (8, 8))
    c = cfg("folder", root=str(split), image_size=8, num_classes=2)
    check(build_dataset(c, "train"), c, 6, labels=[0, 0, 0, 1, 1, 1])
    check(build_dataset(c, "test"), c, 4, labels=[0, 0, 1, 1])


def test_folder_without_images_is_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"folder not found: looked in .*empty.*dataset.root=DIR"):
        build_dataset(cfg("folder", root=str(tmp_path / "empty")), "train")


def test_truncated_image_not_caught_by_verify_fails_by_name(tmp_path):
    root = tmp_path / "imgs"
    good = write_image(root / "a" / "0.jpg", (32, 32))
    bad = root / "a" / "1.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # a valid header, cut-off pixels
    ds = data.FileDataset("folder", [str(bad), str(good)], [0, 0], None, data.ImageTransform("folder", 8, 3))
    with pytest.raises(UserError, match=r"cannot read image .*1\.jpg"):
        ds[0]
    ds.skip_corrupt = True
    x, _ = ds[0]  # served the next readable image instead
    assert x.shape == (3, 8, 8)


# ----------------------------------------------------------------------------------------------------------
# Download wiring (a fake torchvision: no network in tests, ever)


def test_small_dataset_downloads_into_the_cache_by_default(tmp_path, monkeypatch, capsys):
    calls = fake_tv(monkeypatch, MNIST=lambda root: write_mnist(root / "MNIST" / "raw", gz=True))
    c = cfg("mnist", image_size=28, channels=1, num_classes=10)
    assert c.download is None  # the default: no switch needed for a small dataset
    check(build_dataset(c, "train"), c, 5)
    cache = tmp_path / "cache" / "data" / "mnist"
    assert calls == [str(cache)]
    assert f"downloading mnist (~12 MB) into {cache}" in capsys.readouterr().out
    build_dataset(c, "test")
    assert len(calls) == 1  # found in the cache the second time


def test_download_true_fetches_a_large_dataset(tmp_path, monkeypatch):
    def write_celeba(root: Path) -> None:
        write_image(root / "celeba" / "img_align_celeba" / "000001.jpg", (18, 22))
        (root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n")

    calls = fake_tv(monkeypatch, CelebA=write_celeba)
    c = cfg("celeba", image_size=16, download=True, class_names=["face"])
    check(build_dataset(c, "train"), c, 1, labels=[0])
    assert calls == [str(tmp_path / "cache" / "data" / "celeba")]


@pytest.mark.parametrize("name,size", [("places365", "~24 GB"), ("celeba", "~1.4 GB")])
def test_large_dataset_is_not_downloaded_unless_asked(tmp_path, monkeypatch, name, size):
    calls = fake_tv(monkeypatch, Places365=lambda root: None, CelebA=lambda root: None)
    with pytest.raises(UserError) as err:
        build_dataset(cfg(name), "train")
    msg = str(err.value)
    assert "\n" not in msg and f"{name} not found" in msg and f"a {size} download" in msg
    assert "dataset.download=true" in msg and str(tmp_path / "cache" / "data" / name) in msg
    assert calls == []


def test_large_medmnist_size_is_not_downloaded_unless_asked(monkeypatch):
    import medmnist

    monkeypatch.setattr(medmnist.ChestMNIST, "download", lambda self: pytest.fail("downloaded"))
    with pytest.raises(UserError, match=r"chestmnist not found: .*a ~5\.6 GB download.*download=true"):
        build_dataset(cfg("chestmnist", medmnist_size=224, channels=1), "train")


def test_medmnist_downloads_into_the_cache_by_default(tmp_path, monkeypatch, capsys):
    import medmnist

    roots = []

    def fake_download(self) -> None:  # MedMNIST.download: fetch <flag><size_flag>.npz into self.root
        roots.append(self.root)
        write_medmnist(Path(self.root), "bloodmnist.npz", 28, 3, np.array([[3], [7]], np.uint8))

    monkeypatch.setattr(medmnist.BloodMNIST, "download", fake_download)
    c = cfg("bloodmnist", image_size=28)
    check(build_dataset(c, "test"), c, 2, labels=[3, 7])
    cache = tmp_path / "cache" / "data" / "medmnist"  # one folder for every MedMNIST set, like ~/.medmnist
    assert roots == [str(cache)]
    assert f"downloading bloodmnist (~40 MB) into {cache}" in capsys.readouterr().out


def test_download_false_never_downloads(tmp_path, monkeypatch):
    calls = fake_tv(monkeypatch, CIFAR10=lambda root: pytest.fail("downloaded"))
    with pytest.raises(UserError, match=r"cifar10 not found: .*dataset.download=false.*\(~170 MB\)") as err:
        build_dataset(cfg("cifar10", download=False), "train")
    assert "\n" not in str(err.value) and calls == []


def test_failed_download_is_one_line_naming_places_and_the_manual_way(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Error downloading\nhttps://example.invalid: 503")

    monkeypatch.setattr(data, "_tv", lambda: type("tv", (), {"CIFAR10": fail}))
    root = tmp_path / "c"
    with pytest.raises(UserError) as err:
        build_dataset(cfg("cifar10", root=str(root)), "train")  # the default: tries the download
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"dataset cifar10 not found: looked in {root}, ")
    assert f"downloading it (~170 MB) into {root} failed (Error downloading https://example.invalid: 503)" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "dataset.root=DIR" in msg


def test_offline_default_download_is_one_line(tmp_path):
    with pytest.raises(UserError) as err:  # the autouse fixture's torchvision fails as offline
        build_dataset(cfg("svhn"), "train")
    msg = str(err.value)
    assert "\n" not in msg and "svhn not found" in msg and str(tmp_path / "cache" / "data" / "svhn") in msg
    assert "Temporary failure in name resolution" in msg and "ufldl.stanford.edu" in msg


def test_download_without_the_expected_files_says_so(tmp_path, monkeypatch):
    fake_tv(monkeypatch, DTD=lambda root: None)  # "succeeds" but writes nothing
    with pytest.raises(UserError, match=r"dtd: the download into .*cache/data/dtd does not hold the expected"):
        build_dataset(cfg("dtd"), "train")


# ----------------------------------------------------------------------------------------------------------
# Class counts: from the data, or checked against it


def test_folder_class_count_comes_from_its_sub_folders(tmp_path):
    from omegaconf import OmegaConf

    yaml = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONFIG_DIR / "dataset" / "folder.yaml"))
    assert OmegaConf.to_object(yaml).num_classes is None  # configs/dataset/folder.yaml: from the data
    root = tmp_path / "animals"
    for cls in ("ant", "bee", "cat"):
        for i in range(4):
            write_image(root / "train" / cls / f"{i}.png")
            write_image(root / "test" / cls / f"{i}.png")
    c = cfg("folder", root=str(root), image_size=8, num_classes=None)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert train.num_classes == test.num_classes == 3
    info = dataset_info(c, train)
    assert info["num_classes"] == 3 and type(info["num_classes"]) is int
    assert info["class_names"] == ["ant", "bee", "cat"]
    with pytest.raises(ValueError, match="pass the built dataset"):
        dataset_info(c)  # nothing to count without the data

    flat = tmp_path / "flat"
    for i in range(3):
        write_image(flat / f"{i}.png")
    assert dataset_info(c, build_dataset(cfg("folder", root=str(flat), image_size=8), "train"))["num_classes"] == 1


def test_folder_class_count_that_disagrees_with_the_sub_folders_is_refused(tmp_path):
    for cls in ("ant", "bee", "cat"):
        write_image(tmp_path / "animals" / cls / "0.png")
    with pytest.raises(UserError) as err:
        build_dataset(cfg("folder", root=str(tmp_path / "animals"), image_size=8, num_classes=2), "train")
    msg = str(err.value)
    assert "\n" not in msg
    assert "3 class sub-folders (ant, bee, cat) but dataset.num_classes=2" in msg
    assert "set dataset.num_classes=3, or null" in msg


def write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        dump(cifar_batch([i, 0]), folder / f"data_batch_{i}")
    dump(cifar_batch([9, 3]), folder / "test_batch")
    dump({"label_names": [f"c{i}" for i in range(10)]}, folder / "batches.meta")


@pytest.mark.parametrize("kw,words", [
    (dict(name="cifar10", num_classes=12), r"cifar10: 10 classes in the data \(c0, c1, c2, \.\.\.\) but "
                                           r"dataset.num_classes=12; set dataset.num_classes=10"),
    (dict(name="patterns", num_classes=12), r"patterns: 6 classes in the data .* dataset.num_classes=12"),
    (dict(name="patterns", num_classes=6, class_names=["a", "b"]), r"class_names has 2 names .*num_classes=6"),
])
def test_inspect_data_with_class_names_that_disagree_with_num_classes(tmp_path, kw, words):
    """Bug 7: these crashed scripts/inspect_data.py with a traceback (zip strict=True); now one clear line."""
    write_cifar10(tmp_path / "data")
    c = cfg(**kw, root=str(tmp_path / "data"), image_size=8, num_train=12, download=False)
    with pytest.raises(UserError, match=words) as err:
        inspect_dataset(InspectDataRun(dataset=c, num_images=4), tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "summary.json").exists()


def test_num_classes_null_without_class_names_is_refused():
    c = cfg("fashionmnist_small", channels=1, image_size=28)
    with pytest.raises(UserError, match="num_classes is null but the data names no classes"):
        build_dataset(c, "test")
