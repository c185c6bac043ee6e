"""What every script does around its loop: one-line errors, run dir, resolved config, device, seeds."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vqgpt.errors import UserError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into one `error: ...` line on stderr and exit status 2 (no traceback wall)."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def hydra_run_dir() -> Path:
    """The current Hydra run dir (where outputs and the resolved config go)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def resolve_out_dir(out_dir: str) -> Path:
    """`out_dir` as given when absolute, else inside Hydra's run dir; created if missing."""
    path = Path(out_dir)
    if not path.is_absolute():
        path = hydra_run_dir() / path
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_resolved_config(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Write the fully resolved config to `out_dir/config.yaml` (interpolations filled) and return it."""
    OmegaConf.resolve(cfg)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return OmegaConf.to_container(cfg)  # type: ignore[return-value]


def pick_device(name: str = "auto") -> torch.device:
    """`auto` = CUDA when available, else CPU; an unavailable explicit choice is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device={name!r} is not a device name ({e}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} asked for CUDA but none is available here; use device=cpu or auto")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `precision` is bf16; full precision otherwise (CPU autocast is slow)."""
    if precision not in ("bf16", "fp32"):
        raise UserError(f"trainer.precision={precision!r} is not one of bf16, fp32")
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
