"""What the train state holds besides models and optimizers: the data order (resumable to the batch, sharded
across processes) and the EMA of the weights."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from vqgpt.train.distributed import rank, world_size


class BatchStream:
    """Training batches forever: each epoch a fresh permutation (seed + epoch, as DistributedSampler draws it),
    this rank's share of it, full batches only. Its state is (epoch, batches taken), so a resumed run continues
    mid-epoch with the very batches an uninterrupted run would have seen."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0):
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self.epoch, self.position = 0, 0
        self._batches: Iterator | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None

    def _start_epoch(self) -> Iterator:
        sampler = DistributedSampler(self.dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        batches = list(BatchSampler(sampler, self.batch_size, drop_last=True))[self.position:]
        # Its own generator: the workers' seeds never draw from (and so never shift) the global RNG.
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                               generator=generator))

    def __next__(self) -> Any:
        if self._batches is None:
            self._batches = self._start_epoch()
        try:
            batch = next(self._batches)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._start_epoch()
            batch = next(self._batches)
        self.position += 1
        return batch

    def __iter__(self) -> BatchStream:
        return self


class EMA:
    """Exponential moving average of a model's weights, buffers copied (the quantizer's codebook state).

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, as TensorFlow's
    ExponentialMovingAverage(num_updates) does, so a short run's average is not dominated by its random init."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ours = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        theirs = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ours, theirs, 1.0 - decay)
        for mine, other in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(other)
