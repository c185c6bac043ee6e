"""The train state, and its one home: what a checkpoint's train_state.pt holds besides the weights (optimizers,
step, the data order resumable to the batch and sharded across processes, every RNG of every rank, the EMA of the
weights, the best evaluation so far), how it is captured at a save, and how a resumed run gets all of it back.

    state = capture(task, batches, step=..., max_steps=..., skipped=..., rngs=[rng_state(), ...], best=best)
    step, skipped = restore(path, task, ema, batches, trainer, rank=0, world=1, say=print, best=best)

checkpoint.py writes and reads the files; this module decides what goes in them and what a resume means.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from vqgpt.checkpoint import CONFIG_FILE, TRAIN_STATE_FILE, load_checkpoint, resolve_dir
from vqgpt.config import TrainerConfig, dataclass_from_dict
from vqgpt.errors import UserError, one_line
from vqgpt.train.distributed import rank, world_size
from vqgpt.train.optim import lr_at


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


# ---------------------------------------------------------------------------------------------------------
# The best evaluation so far (trainer.keep_best, trainer.early_stop)

# Which way each held-out number improves: -1 lower is better, +1 higher
BEST_DIRECTION = {"loss": -1, "bits_per_token": -1, "bits_per_dim": -1, "fid": -1, "rfid": -1, "lpips": -1,
                  "psnr": 1, "ssim": 1, "accuracy": 1, "test_accuracy": 1}


@dataclasses.dataclass
class Best:
    """The best value of one evaluation metric so far, the step it came at, and how many evaluations since
    brought none better (what early stopping counts). Part of the train state, so a resumed run judges as an
    uninterrupted one would."""

    metric: str
    value: float | None = None
    step: int | None = None
    stale: int = 0  # evaluations in a row without a new best

    def update(self, results: Mapping[str, Any], step: int) -> bool:
        """Take one evaluation's results; True when they are a new best (ties and NaN are not)."""
        value = results.get(self.metric)
        if not isinstance(value, (int, float)):
            numbers = sorted(k for k, v in results.items() if k in BEST_DIRECTION and isinstance(v, (int, float)))
            raise UserError(f"trainer.keep_best={self.metric} but this stage's evaluation reports no {self.metric}; "
                            f"use one of {', '.join(numbers) or '(none: drop trainer.keep_best)'}")
        better = value == value and (self.value is None or (value - self.value) * BEST_DIRECTION[self.metric] > 0)
        if better:
            self.value, self.step, self.stale = float(value), step, 0
        else:
            self.stale += 1
        return better

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["metric"] == self.metric:  # judged by another metric before: start afresh
            self.value, self.step, self.stale = state["value"], state["step"], state["stale"]


# ---------------------------------------------------------------------------------------------------------
# Random streams


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) RNG states, as tensors/plain containers (weights_only-safe)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),  # (int, tuple of ints, float | None): plain already
        # An ndarray would need numpy globals unpickled; a tensor and plain numbers do not.
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNG streams captured by rng_state()."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"].cpu())
    # CUDA streams only restore onto as many GPUs; a resume on other hardware keeps fresh ones.
    if state["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def rng_isolated() -> Iterator[None]:
    """Run the block without moving any RNG stream the training steps draw from (python, numpy, torch, CUDA):
    evaluation and pictures draw too (a DataLoader's base seed, dropout), so a resumed run would otherwise
    continue differently depending on whether its last evaluation fell before or after the resume point."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ---------------------------------------------------------------------------------------------------------
# Resume


def load_train_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict | None:
    """The optimizer/scheduler/RNG state saved beside the weights, or None; never runs pickled code."""
    file = resolve_dir(path) / TRAIN_STATE_FILE
    if not file.is_file():
        return None
    try:  # weights_only: a restricted unpickler that refuses anything but tensors and plain containers
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"{file} is damaged or refused ({one_line(e)}), so training cannot continue from it; "
                        "resume from an intact copy of the run, or drop resume= to start a fresh run (the weights in "
                        f"{file.parent} stay usable for sampling and evaluation)") from None
    if not isinstance(state, dict):
        raise UserError(f"{file} holds a {type(state).__name__}, not a dict, so training cannot continue from it; "
                        "drop resume= to start a fresh run")
    return state


def resume_from(path: str, model: nn.Module, stage: str) -> dict[str, Any]:
    """Load a run's weights into `model` and return its train state; one-line errors for another
    architecture or a missing/damaged train state, before anything is overwritten.

    The weights decide what "another architecture" is (names and shapes); the message names the config keys
    that differ. Keys that leave the weights alone (loss weights, dropout, ...) may change on resume: a note says
    which."""
    ckpt = load_checkpoint(path, expected_stage=stage, ema=False)  # training continues from the raw weights
    ours, theirs = _flat(dataclasses.asdict(model.config)), _flat(ckpt.meta["model_config"])
    differ = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]

    def said(key: str) -> str:
        return f"{stage}.{key}={_show(ours.get(key))} where the checkpoint has {_show(theirs.get(key))}"

    shapes, saved = _shapes(model), _shapes(ckpt.model)
    if shapes != saved:
        diff = [said(k) for k in _keys_that_shape(model, theirs, differ)]
        if not diff:  # same config, other weights: another code version built it
            diff = [f"weights {k} of shape {shapes.get(k)} where the checkpoint has {saved.get(k)}"
                    for k in sorted(set(shapes) | set(saved)) if shapes.get(k) != saved.get(k)]
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise UserError(f"resume={path} is another {stage} architecture: {', '.join(diff[:3])}{more}; resume with "
                        f"the config it was trained with (its {CONFIG_FILE}), or drop resume= to start a fresh run")
    if differ:
        print(f"resume: continuing {path} with {', '.join(said(k) for k in differ)}")
    state = load_train_state(path)
    if state is None:
        raise UserError(f"resume={path} holds weights but no {TRAIN_STATE_FILE} (optimizer, step, RNG), so training "
                        "cannot continue exactly; drop resume= to start a fresh run (the weights stay usable for "
                        "sampling and evaluation)")
    model.load_state_dict(ckpt.model.state_dict())
    return state


def capture(task: Any, batches: BatchStream, *, step: int, max_steps: int, skipped: dict[str, int],
            rngs: list[dict[str, Any]], best: Best | None = None) -> dict[str, Any]:
    """The train state of `task` after `step` steps, for train_state.pt (rngs: every rank's rng_state())."""
    return {
        "best": best.state_dict() if best is not None else None,
        "step": step,
        "max_steps": max_steps,
        "skipped_steps": dict(skipped),  # skipped updates, per optimizer
        "world_size": len(rngs),
        "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
        "modules": {k: m.state_dict() for k, m in task.modules.items() if k != "model"},
        "data": batches.state_dict(),
        "rng": rngs,
    }


def restore(path: str, task: Any, ema: EMA | None, batches: BatchStream, t: TrainerConfig, *, rank: int,
            world: int, device: torch.device, say: Callable[[str], None],
            best: Best | None = None) -> tuple[int, dict[str, int]]:
    """Load the whole train state of checkpoint `path` into `task`, `ema`, `batches` and `best`, and this rank's
    RNG streams; returns (step, skipped updates so far per optimizer)."""
    state = resume_from(path, task.model, task.stage)
    for key in ("optimizers", "data", "rng"):
        if key not in state:
            raise UserError(f"resume={path} was written by an older vqgpt without the full train state "
                            f"({key}); drop resume= to start a fresh run")
    for name, optimizer in task.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    for name, module in task.modules.items():
        if name != "model":
            module.load_state_dict(state["modules"][name])
    if ema is not None:
        saved = load_checkpoint(path, expected_stage=task.stage, map_location=device)
        if saved.weights != "ema":
            say(f"resume: {path} has no EMA weights; the EMA starts from the resumed weights")
        ema.module.load_state_dict(saved.model.state_dict())
    if best is not None and state.get("best"):
        best.load_state_dict(state["best"])
    batches.load_state_dict(state["data"])
    if len(state["rng"]) == world:
        set_rng_state(state["rng"][rank])
    else:
        say(f"resume: saved by {len(state['rng'])} processes, resumed by {world}: the data order and random "
            "streams start afresh from trainer.seed (not an exact continuation)")
        batches.load_state_dict({"epoch": state["data"]["epoch"] + 1, "position": 0})
    step = int(state["step"])
    was = int(state.get("max_steps", t.max_steps))
    if was != t.max_steps and step < t.max_steps:
        before = lr_at(step - 1, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=was)
        after = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps)
        say(f"resume: trainer.max_steps {was} -> {t.max_steps}: the LR schedule is recomputed for {t.max_steps} "
            f"steps, so at step {step} the LR goes from {before:.3g} to {after:.3g} (lower trainer.lr to continue "
            "more gently)")
    say(f"resume: continuing from step {step} of {path}")
    saved = state.get("skipped_steps", 0)
    if not isinstance(saved, dict):  # written before the count was per optimizer: the model's
        saved = {"model": int(saved)}
    return step, {name: int(saved.get(name, 0)) for name in task.optimizers}


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every weight's and buffer's shape, by name."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _keys_that_shape(model: nn.Module, theirs: dict[str, Any], keys: list[str]) -> list[str]:
    """Of the differing config keys, those whose checkpoint value alone changes the weights' shapes (tried on the
    meta device: no memory, no compute), so the error names channels, not a loss weight; all when unsure."""
    mine = dataclasses.asdict(model.config)
    try:
        with torch.device("meta"):
            reference = _shapes(type(model)(dataclass_from_dict(type(model.config), mine)))
    except Exception:  # a model that cannot be built on the meta device: name every difference
        return keys
    shaping = []
    for key in keys:
        variant = copy.deepcopy(mine)
        *parents, leaf = key.split(".")
        node = variant
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = theirs.get(key)
        try:
            with torch.device("meta"):
                changed = _shapes(type(model)(dataclass_from_dict(type(model.config), variant))) != reference
        except Exception:  # not buildable with only this key changed: it is tied to the shapes
            changed = True
        if changed:
            shaping.append(key)
    return shaping or keys


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"quantizer.num_codewords": 1024, ...}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    """A config value as typed on the command line (`null`, `[1,2]`)."""
    return "null" if value is None else str(value).replace(" ", "") if isinstance(value, list) else str(value)
