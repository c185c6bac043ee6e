"""Where a computation runs: the device (`auto` = CUDA when there is one) and torch's CPU threads."""

from __future__ import annotations

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
