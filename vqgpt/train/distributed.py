"""torchrun's process group, as the engine and the scripts use it; every helper is a no-op in a plain
`python scripts/...` run (one process)."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from vqgpt.device import pick_device
from vqgpt.errors import UserError


def distributed() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective: $VQGPT_DIST_TIMEOUT minutes, default 240. Rank 0 works alone while
    the others wait (the token cache of a large dataset, FID statistics, evaluation, FID-N samples), far longer
    than torch's defaults (10 min NCCL, 30 min gloo) that would kill the job."""
    value = os.environ.get("VQGPT_DIST_TIMEOUT", "240")
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if minutes <= 0:
        raise UserError(f"VQGPT_DIST_TIMEOUT={value!r} must be a positive number of minutes, e.g. 240")
    return datetime.timedelta(minutes=minutes)


def init_distributed() -> None:
    """Join the process group torchrun describes (env://): gloo for CPU tensors, NCCL for CUDA ones."""
    if not distributed() or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=collective_timeout())


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def train_device(name: str) -> torch.device:
    """`trainer.device`, except that under torchrun each process takes the GPU of its LOCAL_RANK."""
    if not distributed():
        return pick_device(name)
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"trainer.device={name} under torchrun: use auto, cuda or cpu (each process takes the GPU "
                        "of its LOCAL_RANK); pick GPUs with CUDA_VISIBLE_DEVICES")
    device = pick_device(name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (plain Python objects)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, a token cache), then the others, which find its result."""
    if dist.is_initialized() and rank() != 0:
        dist.barrier()
    yield
    if dist.is_initialized() and rank() == 0:
        dist.barrier()
