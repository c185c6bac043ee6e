"""Datasets: find the images (on disk, by download, or generated), serve (image, label) pairs at one size.

Every dataset yields `(image, label)`: image a float tensor (C, H, W) in [-1, 1] with C = cfg.channels and
H = W = cfg.image_size, label an int. `DATASETS` maps a config name to its loader. A loader looks in
cfg.root, then in the well-known places (`./data/<name>`, vqgpt's cache `cache_dir("data", <name>)`, a
system package's folder), then downloads with torchvision / medmnist (cfg.download: None = the downloads
under AUTO_DOWNLOAD_MB only, True = any, False = none), and reads the files in the dataset's own on-disk
format; if all of that fails it raises one UserError saying where it looked and how to get the data.
Pickled files (CIFAR) go through `safe_pickle`, never plain `pickle`. `build_dataset` checks the labels
and class names against cfg.num_classes (None = the count the data names) and sets `num_classes`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqgpt import safe_pickle
from vqgpt.config import DatasetConfig
from vqgpt.errors import UserError
from vqgpt.paths import cache_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # val: dataset.val_size images held out of train
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_FLAGS = ("chestmnist", "bloodmnist", "dermamnist", "octmnist", "tissuemnist", "pneumoniamnist",
                  "retinamnist")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Folders outside ./data and vqgpt's cache where a package manager or library puts a dataset.
SYSTEM_PLACES = {
    "fashionmnist": ["/usr/share/datasets/fashion-mnist"],  # Debian: apt-get install dataset-fashion-mnist
    "medmnist": ["~/.medmnist"],  # the medmnist package's default root
}
# With dataset.download=null (the default) a missing dataset is downloaded when it is smaller than this;
# larger ones (Places365, CelebA, MedMNIST at 128/224 px) only with dataset.download=true.
AUTO_DOWNLOAD_MB = 1000
# Approximate download size of each dataset with a download, in MB, all splits (MedMNIST: from its INFO).
DOWNLOAD_MB = {"mnist": 12, "fashionmnist": 30, "cifar10": 170, "cifar100": 170, "svhn": 250, "dtd": 600,
               "celeba": 1400, "places365": 24000}


# ----------------------------------------------------------------------------------------------------------
# The transform: one channel count, one size, [-1, 1]


class ImageTransform:
    """PIL image -> float tensor (C, H, W) in [-1, 1]: channel conversion, crop or pad, optional hflip."""

    def __init__(self, name: str, image_size: int, channels: int, resize: str = "crop", hflip: bool = False):
        self.name, self.image_size, self.channels, self.resize, self.hflip = (
            name, image_size, channels, resize, hflip)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        mode, s = "L" if self.channels == 1 else "RGB", self.image_size
        if self.resize == "crop" and img.format == "JPEG":
            img.draft(mode, (s, s))  # let libjpeg decode at 1/2, 1/4, 1/8 scale while both sides stay >= s
        img = img.convert(mode)
        w, h = img.size
        if self.resize == "crop":  # shorter side to s, then the central s x s square
            if min(w, h) != s:
                w, h = max(s, round(w * s / min(w, h))), max(s, round(h * s / min(w, h)))
                img = img.resize((w, h), Image.BICUBIC)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
        elif (w, h) != (s, s):  # pad: black border around the unscaled image
            if w > s or h > s:
                raise UserError(f"dataset {self.name}: an image of {w}x{h} pixels is larger than "
                                f"dataset.image_size={s}, so it cannot be padded; use dataset.resize=crop")
            canvas = Image.new(img.mode, (s, s))
            canvas.paste(img, ((s - w) // 2, (s - h) // 2))
            img = canvas
        x = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W) or (H, W, C)
        x = x.reshape(s, s, self.channels).permute(2, 0, 1).float().div(127.5).sub(1.0)  # (C, H, W)
        if self.hflip and torch.rand(()) < 0.5:  # torch's RNG, so DataLoader workers get distinct flips
            x = x.flip(-1)
        return x


# ----------------------------------------------------------------------------------------------------------
# Dataset classes: every one has `labels` (an int sequence) and `class_names` (list or None);
# build_dataset adds `num_classes` (cfg.num_classes, or resolved from the data)


class ArrayDataset(Dataset):
    """Images in a uint8 array (N, H, W) or (N, H, W, C) with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str] | None,
                 transform: ImageTransform):
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels: the files do not match")
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]  # (N, H, W, 1) -> (N, H, W): PIL wants 2-D grayscale
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64).reshape(-1)
        self.class_names, self.transform = class_names, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class FileDataset(Dataset):
    """Image files with integer labels; an unreadable file raises UserError naming it (or is skipped)."""

    def __init__(self, name: str, paths: list[str], labels: Sequence[int], class_names: list[str] | None,
                 transform: ImageTransform, skip_corrupt: bool = False):
        self.name, self.paths, self.labels = name, paths, np.asarray(labels, dtype=np.int64)
        self.class_names, self.transform, self.skip_corrupt = class_names, transform, skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Files not verified up front (big datasets) can still be bad: name the file, or with
        # skip_corrupt serve the next readable one rather than kill a long run.
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                with Image.open(self.paths[j]) as img:
                    return self.transform(img), int(self.labels[j])
            except UserError:
                raise
            except Exception as e:  # OSError, SyntaxError, DecompressionBombError, ...: PIL's ways to fail
                if not self.skip_corrupt:
                    raise UserError(f"dataset {self.name}: cannot read image {self.paths[j]} "
                                    f"({_oneline(e)}); delete it or set dataset.skip_corrupt=true") from None
                log.warning(f"dataset {self.name}: skipping unreadable image {self.paths[j]}")
        raise UserError(f"dataset {self.name}: none of its {len(self.paths)} images can be read")


class HeldOut(Dataset):
    """Some images of another dataset, by index: the train split less its validation images, or those images."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base, self.indices = base, [int(i) for i in indices]
        self.labels, self.class_names = np.asarray(base.labels)[self.indices], base.class_names
        if getattr(base, "paths", None) is not None:  # files_fingerprint: which files this split is
            self.paths = [base.paths[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.base[self.indices[i]]


def stratified_split(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, rest) indices: `fraction` of each class, drawn at random with `seed` (data in class order, as
    folders and ImageNet are, would otherwise hold out one class)."""
    labels = torch.as_tensor(np.asarray(labels))
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[: round(len(members) * fraction)])
    held_out = torch.cat(held).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held_out] = False
    return held_out, rest.nonzero().flatten()


PATTERN_CLASSES = ["checkerboard", "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "circle",
                   "square"]


def make_pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic RGB image (size, size, 3) uint8 of class `label` (see PATTERN_CLASSES)."""
    fg = rng.integers(0, 256, 3)
    bg = (fg + rng.integers(96, 161, 3)) % 256  # every channel differs by >= 96, so the shape stays visible
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(max(2, size // 8), max(3, size // 3) + 1))
    phase = int(rng.integers(0, period))
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.15, 0.3) * size
    mask = [
        ((xx + phase) // period + (yy + phase) // period) % 2 == 0,
        ((yy + phase) // period) % 2 == 0,
        ((xx + phase) // period) % 2 == 0,
        ((xx + yy + phase) // period) % 2 == 0,
        (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r,
        np.maximum(abs(xx - cx), abs(yy - cy)) <= r,
    ][label]
    return np.where(mask[..., None], fg, bg).astype(np.uint8)


class PatternDataset(Dataset):
    """Synthetic checkerboards, stripes and shapes, made on the fly from (seed, split, index)."""

    def __init__(self, num_images: int, image_size: int, seed: int, split: str, transform: ImageTransform):
        self.image_size, self.seed, self.transform = image_size, seed, transform
        self.split_id = SPLITS.index(split)  # train and test draw from different streams
        self.labels = np.arange(num_images) % len(PATTERN_CLASSES)  # balanced classes
        self.class_names = list(PATTERN_CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng((self.seed, self.split_id, i))  # same item on any worker, any epoch
        label = int(self.labels[i])
        return self.transform(Image.fromarray(make_pattern(label, self.image_size, rng))), label


# ----------------------------------------------------------------------------------------------------------
# Finding the data


def _oneline(e: BaseException) -> str:
    """An exception's message on one line (library errors often span several)."""
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


def _places(cfg: DatasetConfig, where: str) -> list[Path]:
    """Where to look, in order: cfg.root, ./data/<where>, vqgpt's cache data/<where>, system places."""
    places = [cfg.root] if cfg.root else []
    places += [Path.cwd() / "data" / where, cache_dir("data", where)]
    places += SYSTEM_PLACES.get(where, [])
    return list(dict.fromkeys(Path(p).expanduser() for p in places))


def _layout(under: Sequence[str], *required: str) -> Callable[[Path], Path | None]:
    """A test for a place: the first `place/u` (u in `under`) holding all `required` ("a|b": either)."""

    def looks_like(place: Path) -> Path | None:
        for u in under:
            d = place / u
            if d.is_dir() and all(any((d / alt).exists() for alt in r.split("|")) for r in required):
                return d
        return None

    return looks_like


def _size(mb: float) -> str:
    """A download size for a message: ~170 MB, ~1.4 GB."""
    return f"~{round(mb / 1000, 1):g} GB" if mb >= 1000 else f"~{max(1, round(mb))} MB"


def _find(cfg: DatasetConfig, name: str, looks_like: Callable[[Path], Path | None], hint: str,
          download: Callable[[Path], Any] | None = None, where: str | None = None,
          size_mb: float | None = None) -> Path:
    """The folder holding `name`'s files: the first place that looks right, else a download, or UserError."""
    places = _places(cfg, where or name)
    for place in places:
        if place.is_dir() and (found := looks_like(place)) is not None:
            return found
    missing = f"dataset {name} not found: looked in {', '.join(map(str, places))}"
    if download is None:
        raise UserError(f"{missing}; {hint}")
    mb = DOWNLOAD_MB[name] if size_mb is None else size_mb
    target = Path(cfg.root).expanduser() if cfg.root else cache_dir("data", where or name)
    if cfg.download is False:
        raise UserError(f"{missing}; dataset.download=false, so it is not fetched: set dataset.download=true "
                        f"to download it ({_size(mb)}) into {target}, or {hint}")
    if cfg.download is None and mb >= AUTO_DOWNLOAD_MB:
        raise UserError(f"{missing}; it is a {_size(mb)} download, fetched only on request: set "
                        f"dataset.download=true to download it into {target}, or {hint}")
    print(f"downloading {name} ({_size(mb)}) into {target}", flush=True)
    try:
        target.mkdir(parents=True, exist_ok=True)
        download(target)
    except Exception as e:  # offline, a dead mirror, a full disk, a checksum: one line, never a traceback
        raise UserError(f"{missing}; downloading it ({_size(mb)}) into {target} failed ({_oneline(e)}); "
                        f"{hint}") from None
    if (found := looks_like(target)) is None:
        raise UserError(f"dataset {name}: the download into {target} does not hold the expected files; "
                        f"delete that folder to download again, or {hint}")
    return found


def _tv() -> Any:
    """torchvision.datasets, imported only when a download needs it."""
    import torchvision.datasets

    return torchvision.datasets


def _image_files(folder: str | Path) -> list[str]:
    """Every image file under `folder`, recursively, in sorted (deterministic) order."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS))


def _any_image(folder: str | Path) -> bool:
    """Whether `folder` holds at least one image file, at any depth (stops at the first)."""
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(folder) for f in files)


def _scan_classes(folder: Path, class_names: list[str] | None = None,
                  flat_name: str | None = None) -> tuple[list[str], list[str], list[int]]:
    """(class_names, paths, labels) of an image folder: one class per sub-folder, or one class if flat."""
    subdirs = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    files = {d: f for d in subdirs if (f := _image_files(folder / d))}  # folders without images: no class
    if not files:  # images directly in `folder`: one class
        paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        return class_names or [flat_name or folder.name], paths, [0] * len(paths)
    class_names = class_names or list(files)
    index = {c: i for i, c in enumerate(class_names)}
    if unknown := [d for d in files if d not in index]:
        raise UserError(f"{folder}: class folder(s) {', '.join(unknown)} are not among the training classes")
    return class_names, [p for d in files for p in files[d]], [index[d] for d in files for _ in files[d]]


def _verified(name: str, paths: list[str], labels: list[int], skip_corrupt: bool
              ) -> tuple[list[str], list[int]]:
    """Check that every file opens as an image now, so a bad file fails at startup, not mid-epoch."""
    good, bad = [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            with Image.open(path) as img:
                img.verify()  # reads the headers and checksums, not the pixels: cheap
            good.append((path, label))
        except Exception as e:
            if not skip_corrupt:
                raise UserError(f"dataset {name}: cannot read image {path} ({_oneline(e)}); "
                                f"delete it or set dataset.skip_corrupt=true") from None
            bad.append(path)
    if bad:
        log.warning(f"dataset {name}: skipped {len(bad)} unreadable image(s), e.g. {bad[0]}")
    return [p for p, _ in good], [lbl for _, lbl in good]


def _loadmat(path: Path, *keys: str) -> dict:
    """scipy.io.loadmat, with a UserError naming the file if it is unreadable or lacks one of `keys`."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise UserError(f"cannot read {path} as a .mat file ({_oneline(e)}); re-download it") from None
    if missing := [k for k in keys if k not in mat]:
        raise UserError(f"{path} lacks the variable(s) {', '.join(missing)}; is it the right file?")
    return mat


def _mat_str(x: Any) -> str:
    """The string inside a MATLAB cell entry (nested 1-element arrays)."""
    while isinstance(x, np.ndarray):
        x = x.ravel()[0]
    return str(x)


def _lines(path: Path) -> list[str]:
    """The non-empty lines of a text file, stripped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _wnid_names(folder: Path, wnids: list[str]) -> list[str]:
    """Readable names for WordNet ids from words.txt / LOC_synset_mapping.txt if present, else the ids."""
    for fname in ("words.txt", "LOC_synset_mapping.txt"):
        if (folder / fname).is_file():
            pairs = (line.replace("\t", " ").split(" ", 1) for line in _lines(folder / fname))
            words = {p[0]: p[1].split(",")[0].strip() for p in pairs if len(p) == 2}
            return [words.get(w, w) for w in wnids]
    return list(wnids)


# ----------------------------------------------------------------------------------------------------------
# Loaders: (cfg, split, transform) -> Dataset, split already "train" or "test"

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (MNIST's format, plain or gzipped) into a native-endian array of its stored shape."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read idx file {path} ({_oneline(e)}); re-download it") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number); re-download it")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    offset = 4 + 4 * ndim
    shape = tuple(int(n) for n in np.frombuffer(raw[4:offset], ">i4")) if len(raw) >= offset else None
    if shape is None or len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"{path}: idx size does not match its header (truncated?); re-download it")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _load_idx(name: str, tv_class: str, cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """MNIST / Fashion-MNIST from idx files, flat or in torchvision's <root>/<Class>/raw/ layout."""
    prefix = "train" if split == "train" else "t10k"
    images, labels = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    hint = f"put {images}[.gz] and the other idx files in a folder and set dataset.root=DIR"
    if name == "fashionmnist":
        hint = f"apt-get install dataset-fashion-mnist, or {hint}"
    folder = _find(cfg, name, _layout(["", "raw", f"{tv_class}/raw"], f"{images}|{images}.gz",
                                      f"{labels}|{labels}.gz"), hint,
                   download=lambda d: getattr(_tv(), tv_class)(str(d), download=True))
    read = lambda stem: read_idx(folder / stem if (folder / stem).exists() else folder / f"{stem}.gz")
    return ArrayDataset(read(images), read(labels), cfg.class_names, transform)


def _load_fashionmnist_small(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """The bundled 12,000-image Fashion-MNIST subset (vqgpt/assets): always there, for tests and demos."""
    with np.load(ASSETS / "fashionmnist_small.npz") as z:
        return ArrayDataset(z[f"{split}_images"], z[f"{split}_labels"], cfg.class_names, transform)


def _load_cifar(name: str, cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """CIFAR-10 / CIFAR-100 from the python-version pickles (through safe_pickle)."""
    if name == "cifar10":
        sub, meta, names_key, labels_key = "cifar-10-batches-py", "batches.meta", "label_names", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        sub, meta, names_key, labels_key = "cifar-100-python", "meta", "fine_label_names", "fine_labels"
        files = [split]
    folder = _find(cfg, name, _layout(["", sub], meta, *files),
                   f"download the python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
                   f"extract it and set dataset.root=DIR (holding {sub}/)",
                   download=lambda d: getattr(_tv(), name.upper())(str(d), download=True))
    try:
        batches = [safe_pickle.load(folder / f) for f in files]
        images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[labels_key]) for b in batches])
        class_names = [str(c) for c in safe_pickle.load(folder / meta)[names_key]]
        images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes of 32x32
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"dataset {name}: {folder} does not hold the expected CIFAR batches "
                        f"({_oneline(e)}); re-download it") from None
    return ArrayDataset(images, labels, class_names, transform)


def _load_svhn(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """SVHN cropped digits from train_32x32.mat / test_32x32.mat."""
    fname = f"{split}_32x32.mat"
    folder = _find(cfg, "svhn", _layout(["", "svhn"], fname),
                   f"download {fname} from http://ufldl.stanford.edu/housenumbers/ and set "
                   "dataset.root=DIR",
                   download=lambda d: _tv().SVHN(str(d), split=split, download=True))
    mat = _loadmat(folder / fname, "X", "y")
    images = np.transpose(mat["X"], (3, 0, 1, 2))  # stored (H, W, C, N)
    labels = mat["y"].reshape(-1).astype(np.int64) % 10  # SVHN writes the digit 0 as label 10
    return ArrayDataset(images, labels, cfg.class_names, transform)


def _load_celeba(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """CelebA aligned faces; one class (attributes ignored). Own reader: torchvision's insists on md5 sums."""
    folder = _find(cfg, "celeba", _layout(["", "celeba"], "img_align_celeba",
                                          "list_eval_partition.txt|list_eval_partition.csv"),
                   "download img_align_celeba.zip and list_eval_partition.txt from "
                   "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into DIR/celeba/, unzip, "
                   "set dataset.root=DIR",
                   download=lambda d: _tv().CelebA(str(d), split="all", target_type=[],
                                                                  download=True))
    images = folder / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # the Kaggle copy nests the folder twice
        images = images / "img_align_celeba"
    partition_file = next(folder / f for f in ("list_eval_partition.txt", "list_eval_partition.csv")
                          if (folder / f).exists())
    want = "0" if split == "train" else "2"  # 0 train, 1 val, 2 test
    rows = (line.replace(",", " ").split() for line in _lines(partition_file))
    paths = [str(images / r[0]) for r in rows if len(r) == 2 and r[1] == want]
    return FileDataset("celeba", paths, [0] * len(paths), cfg.class_names, transform, cfg.skip_corrupt)


def _load_dtd(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """Describable Textures: images/<class>/*.jpg with the labels/train1.txt, test1.txt partition."""
    folder = _find(cfg, "dtd", _layout(["", "dtd", "dtd/dtd"], "images", f"labels/{split}1.txt"),
                   "download dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/, "
                   "extract it and set dataset.root=DIR (holding images/ and labels/)",
                   download=lambda d: _tv().DTD(str(d), download=True))
    class_names = sorted(d.name for d in os.scandir(folder / "images") if d.is_dir())
    index = {c: i for i, c in enumerate(class_names)}
    rel = _lines(folder / "labels" / f"{split}1.txt")
    paths = [str(folder / "images" / r) for r in rel]
    return FileDataset("dtd", paths, [index[r.split("/")[0]] for r in rel], class_names, transform,
                       cfg.skip_corrupt)


def _load_places365(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """Places365-Standard in torchvision's layout (the small 256x256 images preferred); test = val."""
    train = split == "train"
    list_file = "places365_train_standard.txt" if train else "places365_val.txt"
    image_dirs = ["data_256_standard", "data_256", "data_large_standard", "data_large"] if train else [
        "val_256", "val_large"]
    folder = _find(cfg, "places365", _layout(["", "places365"], "categories_places365.txt", list_file,
                                             "|".join(image_dirs)),
                   "download the 256x256 Places365-Standard images and file lists from "
                   "http://places2.csail.mit.edu/download.html and set dataset.root=DIR",
                   download=lambda d: _tv().Places365(
                       str(d), split="train-standard" if train else "val", small=True, download=True))
    # "/a/airfield 0" -> "airfield"; "/a/apartment_building/outdoor 8" -> "apartment_building/outdoor"
    categories = [line.split() for line in _lines(folder / "categories_places365.txt")]
    class_names = [c.split("/", 2)[2] for c, _ in sorted(categories, key=lambda c: int(c[1]))]
    images = folder / next(d for d in image_dirs if (folder / d).is_dir())
    rows = [line.split() for line in _lines(folder / list_file)]
    return FileDataset("places365", [str(images / r[0].lstrip("/")) for r in rows],
                       [int(r[1]) for r in rows], class_names, transform, cfg.skip_corrupt)


def _load_tinyimagenet(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """Tiny ImageNet (200 classes, 64x64): train/<wnid>/images/, and val/ (with its annotations) as test."""
    folder = _find(cfg, "tinyimagenet", _layout(["", "tiny-imagenet-200"], "wnids.txt", "train",
                                                "val/val_annotations.txt"),
                   "download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and set "
                   "dataset.root=DIR (there is no automatic download)")
    wnids = sorted(_lines(folder / "wnids.txt"))
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        paths, labels = [], []
        for w in wnids:
            files = _image_files(folder / "train" / w / "images")
            paths += files
            labels += [index[w]] * len(files)
    else:
        rows = [line.split("\t") for line in _lines(folder / "val" / "val_annotations.txt")]
        paths = [str(folder / "val" / "images" / r[0]) for r in rows]
        labels = [index[r[1]] for r in rows]
    return FileDataset("tinyimagenet", paths, labels, _wnid_names(folder, wnids), transform, cfg.skip_corrupt)


def _load_imagenet(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """ImageNet (ILSVRC2012) as image folders train/<wnid>/ and val/<wnid>/; test = val."""
    folder = _find(cfg, "imagenet", _layout(["", "imagenet"], "train", "val"),
                   "download ImageNet (ILSVRC2012) by hand from image-net.org and set dataset.root=DIR "
                   "with train/<wnid>/ and val/<wnid>/ folders (there is no automatic download)")
    wnids = sorted(d.name for d in os.scandir(folder / "train") if d.is_dir())  # both splits use train's
    _, paths, labels = _scan_classes(folder / ("train" if split == "train" else "val"), wnids)
    return FileDataset("imagenet", paths, labels, _wnid_names(folder, wnids), transform, cfg.skip_corrupt)


def _load_stanforddogs(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """Stanford Dogs: Images/<wnid>-<breed>/ with train_list.mat / test_list.mat; classes = folder names."""
    folder = _find(cfg, "stanforddogs", _layout(["", "stanforddogs", "StanfordDogs"], "Images",
                                                f"{split}_list.mat"),
                   "download images.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/,"
                   " extract both into one folder and set dataset.root=DIR (there is no automatic download)")
    folders = sorted(d.name for d in os.scandir(folder / "Images") if d.is_dir())
    index = {f: i for i, f in enumerate(folders)}  # sorted folders = the official label order 1..120
    rel = [_mat_str(x) for x in _loadmat(folder / f"{split}_list.mat", "file_list")["file_list"].ravel()]
    if missing := sorted({r.split("/")[0] for r in rel} - set(index)):
        raise UserError(f"dataset stanforddogs: {folder / 'Images'} lacks {', '.join(missing[:3])}; "
                        "re-extract images.tar")
    class_names = [f.split("-", 1)[-1].replace("_", " ") for f in folders]  # n02085620-Chihuahua -> Chihuahua
    return FileDataset("stanforddogs", [str(folder / "Images" / r) for r in rel],
                       [index[r.split("/")[0]] for r in rel], class_names, transform, cfg.skip_corrupt)


def _load_medmnist(flag: str, cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """A MedMNIST v2 2-D set through the medmnist package, from <flag>.npz or <flag>_<size>.npz."""
    import medmnist

    info = medmnist.INFO[flag]
    size = cfg.medmnist_size or next((s for s in MEDMNIST_SIZES if s >= cfg.image_size), MEDMNIST_SIZES[-1])
    fname = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    cls = getattr(medmnist, info["python_class"])
    folder = _find(cfg, flag, _layout([""], fname),
                   f"download {fname} from https://zenodo.org/records/10519652 into a folder and set "
                   f"dataset.root=DIR", where="medmnist",
                   download=lambda d: cls(split="train", root=str(d), size=size, download=True),
                   size_mb=sum(info["n_samples"].values()) * size * size * info["n_channels"] / 1e6)
    try:
        data = cls(split=split, root=str(folder), size=size)
    except Exception as e:
        raise UserError(f"dataset {flag}: cannot read {folder / fname} ({_oneline(e)}); re-download it"
                        ) from None
    class_names = [info["label"][str(i)] for i in range(len(info["label"]))]
    labels = np.asarray(data.labels)
    if flag == "chestmnist":
        # 14 binary findings per image -> one class: 0 = "normal" (no finding), else 1 + the first finding
        # in medmnist.INFO order, so "atelectasis + effusion" counts as atelectasis.
        labels = np.where(labels.any(axis=1), labels.argmax(axis=1) + 1, 0)
        class_names = ["normal", *class_names]
    return ArrayDataset(np.asarray(data.imgs), labels, class_names, transform)


def _load_folder(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """Any folder of images: sub-folders are classes; train/ + test/ (or val/) inside are the splits."""
    root = _find(cfg, "folder", lambda p: p if _any_image(p) else None,
                 "set dataset.root=DIR to a folder of JPG/PNG images (one sub-folder per class, "
                 "or train/ and test/ sub-folders)")
    held_out = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        class_names, paths, labels = _scan_classes(root / "train", flat_name=root.name)
        if split == "test":
            _, paths, labels = _scan_classes(held_out, class_names)
    else:
        # No split on disk: hold out the files whose path hash is 0 mod 10 (~10%). A hash, not the sort
        # order, so adding images never moves an old one between splits. At least one file is held out.
        class_names, paths, labels = _scan_classes(root)
        hashes = [zlib.crc32(os.path.relpath(p, root).encode()) for p in paths]
        test = [h % 10 == 0 for h in hashes]
        if len(paths) > 1 and not any(test):
            test[int(np.argmin(hashes))] = True
        keep = [i for i, t in enumerate(test) if t == (split == "test")]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    paths, labels = _verified("folder", paths, labels, cfg.skip_corrupt)
    return FileDataset("folder", paths, labels, class_names, transform, cfg.skip_corrupt)


def _load_patterns(cfg: DatasetConfig, split: str, transform: ImageTransform) -> Dataset:
    """Synthetic patterns, cfg.num_train / cfg.num_test of them, deterministic by cfg.seed."""
    n = cfg.num_train if split == "train" else cfg.num_test
    return PatternDataset(n, cfg.image_size, cfg.seed, split, transform)


DATASETS: dict[str, Callable[[DatasetConfig, str, ImageTransform], Dataset]] = {
    "mnist": functools.partial(_load_idx, "mnist", "MNIST"),
    "fashionmnist": functools.partial(_load_idx, "fashionmnist", "FashionMNIST"),
    "fashionmnist_small": _load_fashionmnist_small,
    "cifar10": functools.partial(_load_cifar, "cifar10"),
    "cifar100": functools.partial(_load_cifar, "cifar100"),
    "svhn": _load_svhn,
    "celeba": _load_celeba,
    "dtd": _load_dtd,
    "places365": _load_places365,
    "tinyimagenet": _load_tinyimagenet,
    "imagenet": _load_imagenet,
    "stanforddogs": _load_stanforddogs,
    **{flag: functools.partial(_load_medmnist, flag) for flag in MEDMNIST_FLAGS},
    "folder": _load_folder,
    "patterns": _load_patterns,
}


# ----------------------------------------------------------------------------------------------------------
# Public entry points


def check_config(cfg: DatasetConfig) -> None:
    """Raise a one-line UserError for a dataset config that cannot work, before touching any file."""
    if cfg.name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.name!r}; choose one of: {', '.join(DATASETS)}")
    if cfg.resize not in ("crop", "pad"):
        raise UserError(f"dataset.resize must be crop or pad, got {cfg.resize!r}")
    if cfg.channels not in (1, 3):
        raise UserError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {cfg.channels}")
    if cfg.image_size < 1:
        raise UserError(f"dataset.image_size must be at least 1, got {cfg.image_size}")
    if cfg.num_classes is not None and cfg.num_classes < 1:
        raise UserError(f"dataset.num_classes must be at least 1 (or null: from the data), got {cfg.num_classes}")
    if cfg.class_names is not None and cfg.num_classes is not None and len(cfg.class_names) != cfg.num_classes:
        raise UserError(f"dataset.class_names has {len(cfg.class_names)} names but dataset.num_classes="
                        f"{cfg.num_classes}; make them agree (dataset.num_classes=null takes the count from "
                        f"the names)")
    if cfg.medmnist_size is not None and cfg.medmnist_size not in MEDMNIST_SIZES:
        raise UserError(f"dataset.medmnist_size must be 28, 64, 128, 224 or null, got {cfg.medmnist_size}")


def _num_classes(cfg: DatasetConfig, dataset: Dataset) -> int:
    """cfg.num_classes, or the count of the data's class names if it is None; a mismatch is a UserError."""
    names = dataset.class_names or cfg.class_names  # cfg's names already agree with cfg.num_classes
    if cfg.num_classes is None:
        if not names:
            raise UserError(f"dataset {cfg.name}: dataset.num_classes is null but the data names no classes; "
                            f"set dataset.num_classes")
        return len(names)
    if names and len(names) != cfg.num_classes:  # inspect_data, sampling by name, checkpoints: all need 1:1
        shown = ", ".join(map(str, names[:3])) + (", ..." if len(names) > 3 else "")
        found = "class sub-folders" if cfg.name == "folder" else "classes in the data"
        raise UserError(f"dataset {cfg.name}: {len(names)} {found} ({shown}) but dataset.num_classes="
                        f"{cfg.num_classes}; set dataset.num_classes={len(names)}, or null to take the count "
                        f"from the data")
    return cfg.num_classes


def build_dataset(cfg: DatasetConfig, split: str, train: bool | None = None) -> Dataset:
    """Split "train", "val" or "test" of cfg.name: (image (C, H, W) in [-1, 1], int label); train=False: no hflip.

    With dataset.val_size > 0, "val" is that many training images (the same share of each class) and "train" is
    the rest; both come from the data's own training split, so the test split is never looked at while tuning."""
    check_config(cfg)
    if split not in SPLITS:
        raise UserError(f"split must be train, val or test, got {split!r}")
    if split == "val" and cfg.val_size == 0:
        raise UserError(f"dataset {cfg.name}: the val split is empty; set dataset.val_size to hold out that many "
                        f"training images (e.g. dataset.val_size=2000)")
    hflip = cfg.hflip and split == "train" and train is not False
    transform = ImageTransform(cfg.name, cfg.image_size, cfg.channels, cfg.resize, hflip)
    dataset = DATASETS[cfg.name](cfg, "test" if split == "test" else "train", transform)
    if len(dataset) == 0:
        raise UserError(f"dataset {cfg.name}: the {split} split holds no images")
    if cfg.val_size and split != "test":
        if cfg.val_size >= len(dataset):
            raise UserError(f"dataset {cfg.name}: dataset.val_size={cfg.val_size} leaves no training images of "
                            f"{len(dataset)}; hold out fewer")
        # the same images whatever the run's seed, so every run of a sweep selects on one validation set
        val, rest = stratified_split(dataset.labels, cfg.val_size / len(dataset), seed=0)
        dataset = HeldOut(dataset, val if split == "val" else rest)
    dataset.num_classes = _num_classes(cfg, dataset)
    top = int(np.max(dataset.labels))
    if top >= dataset.num_classes:  # would index past the GPT's class embedding much later, on the GPU
        raise UserError(f"dataset {cfg.name}: labels go up to {top} but dataset.num_classes="
                        f"{dataset.num_classes}; set dataset.num_classes={top + 1}")
    with torch.random.fork_rng(devices=[]):  # read one item now (format, pad size) without moving the RNG
        dataset[0]
    return dataset


def eval_split(cfg: DatasetConfig) -> str:
    """The split that training reports on and recipes are tuned on: "val" when images are held out, else "test"."""
    return "val" if cfg.val_size else "test"


def config_facts(cfg: DatasetConfig, split: str | None = None) -> dict:
    """The data config as a cache key sees it: val_size only where it changes the images (of `split`, if given),
    so caches made before it existed, and the test split's, keep their keys."""
    facts = dataclasses.asdict(cfg)
    if not facts["val_size"] or split == "test":
        del facts["val_size"]
    return facts


def files_fingerprint(dataset: Dataset) -> dict | None:
    """What a split's image files are now: their count and a hash of every (path, size, mtime); None for data
    that is not a list of files (arrays read whole, generated patterns), which its config alone decides.

    Caches built from a split (tokens, FID statistics) record it, so a folder whose images changed is
    noticed even though its config did not."""
    paths = getattr(dataset, "paths", None)
    if paths is None:
        return None
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # gone since the scan: still a change
            digest.update(f"{path}\0missing\n".encode())
    return {"files": len(paths), "sha256": digest.hexdigest()[:16]}


def dataset_info(cfg: DatasetConfig, dataset: Dataset | None = None) -> dict:
    """What a checkpoint records about its data; class names and count from `dataset` (built) if given."""
    class_names = getattr(dataset, "class_names", None) or cfg.class_names
    num_classes = getattr(dataset, "num_classes", None) or cfg.num_classes
    if num_classes is None and cfg.class_names:
        num_classes = len(cfg.class_names)
    if num_classes is None:
        raise ValueError(f"dataset {cfg.name}: dataset.num_classes is null; pass the built dataset to count "
                         "its classes")
    return {
        "dataset": cfg.name,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "num_classes": num_classes,
        "class_names": [str(c) for c in class_names] if class_names else None,
    }
