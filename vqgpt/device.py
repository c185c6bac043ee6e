"""Where a computation runs: the device (`auto` = CUDA when there is one), its precision and torch's CPU threads."""

from __future__ import annotations

import contextlib

import torch

from vqgpt.errors import UserError


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


def set_threads(num_threads: int | None) -> None:
    """torch's intra-op CPU threads (`trainer.num_threads`); None keeps torch's choice (one per core).

    On a small machine shared with other work, one thread per process avoids the 3-6x slowdown of threads
    fighting for a busy core (docs/demo.md has the measurements)."""
    if num_threads is None:
        return
    if num_threads < 1:
        raise UserError(f"trainer.num_threads={num_threads} must be >= 1, or null for torch's choice")
    torch.set_num_threads(num_threads)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """`trainer.precision`: auto = bf16 autocast on a GPU that computes bf16 natively (Ampere and newer), fp32 on
    older GPUs (T4, V100: bf16 there is emulated, slower than fp32) and on the CPU (where bf16 autocast measured
    slower, docs/training.md); bf16 = bf16 autocast on either; fp32 = off."""
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"trainer.precision={precision!r} is not one of auto, bf16, fp32")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and native_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def native_bf16() -> bool:
    """Whether this process's GPU has bf16 in hardware (is_bf16_supported alone counts emulation)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument: compute capability 8.0 (Ampere) and newer
        return torch.cuda.get_device_capability()[0] >= 8
