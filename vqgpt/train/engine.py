"""The one training engine: every stage (tokenizer, GPT, classifier, and those to come) is a small task that says
what a step computes; the engine owns the rest, once.

    engine = Engine(run.trainer, out_dir, config, run.logger, resume=run.resume)
    task = GPTTask(run, engine)           # builds models and optimizers on engine.device
    results = engine.fit(task)

The engine owns the train state (models, optimizers, step, the data order and position within the epoch, every
RNG of every rank, the quantizer's buffers, the EMA weights) and saves and restores all of it, so a resumed run
continues as if never stopped. Around the task's step it runs the loop skeleton: device and process group
(torchrun), seeding, the LR schedule, autocast, accumulation, clipping, skipping non-finite steps, EMA, the
log/eval/sample/checkpoint cadence, the best checkpoint and early stopping (trainer.keep_best, trainer.early_stop),
the progress bar, SIGINT/SIGTERM, and the final evaluation.

A task has: `stage`, `arch`, `meta` (its checkpoint's config.json facts), `model` (the checkpointed module),
`modules` and `optimizers` (dicts with the same keys; "model" first), `train_set`, and the methods
`train_step(engine, step) -> logs`, `describe() -> str` (the run's first line: data, model, size),
`evaluate(model) -> results`, `snapshot(model, step) -> Path | None` (a picture of progress) and
`summary(results) -> str`. The train state itself (what a save captures, what a resume restores) lives in
state.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from vqgpt.checkpoint import read_meta, save_checkpoint
from vqgpt.config import LoggerConfig, TrainerConfig
from vqgpt.device import autocast, set_threads
from vqgpt.errors import UserError
from vqgpt.progress import progress
from vqgpt.train.distributed import distributed, init_distributed, main_rank_first, rank, train_device, world_size
from vqgpt.train.loggers import build_logger
from vqgpt.train.optim import adamw, lr_at, set_lr
from vqgpt.train.runtime import check_batch_fits, check_checkpoint_target, check_trainer, seed_everything
from vqgpt.train.state import EMA, BatchStream, Best, capture, restore, rng_isolated, rng_state


class Task(Protocol):
    """What a stage gives the engine (see the module docstring)."""

    stage: str
    arch: str
    meta: dict[str, Any]
    model: nn.Module
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    train_set: Dataset
    eval_split: str  # the split `evaluate` measures: "val" when the data holds images out, else "test"

    def train_step(self, engine: Engine, step: int) -> dict[str, Any]: ...
    def describe(self) -> str: ...
    def evaluate(self, model: nn.Module) -> dict[str, Any]: ...
    def snapshot(self, model: nn.Module, step: int) -> Path | None: ...
    def summary(self, results: dict[str, Any]) -> str: ...


class Interrupted(UserError):
    """SIGINT/SIGTERM: the run stopped after a checkpoint; the message says how to resume."""

    label = "interrupted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


# ---------------------------------------------------------------------------------------------------------
# the engine


def wrap(module: nn.Module, *, ddp: bool, device_ids: list[int] | None = None, find_unused: bool = False,
         compile: bool = False) -> nn.Module:
    """DistributedDataParallel around the module, then torch.compile around that: compiling the DDP-wrapped model
    lets Dynamo see DDP's buckets and split the graph at them, so gradient all-reduces overlap the backward pass
    (PyTorch's DDPOptimizer); DDP around a compiled module would all-reduce only after the whole backward."""
    net = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused) if ddp else module
    return torch.compile(net) if compile else net


def ddp_of(net: nn.Module) -> DistributedDataParallel | None:
    """The DistributedDataParallel inside `net` (compiled or not), or None."""
    inner = getattr(net, "_orig_mod", net)  # torch.compile's OptimizedModule keeps the module it compiled
    return inner if isinstance(inner, DistributedDataParallel) else None


class Engine:
    """Owns device, process group, train state and loop for one training run (see the module docstring)."""

    def __init__(self, trainer: TrainerConfig, out_dir: Path, config: dict[str, Any], logger: LoggerConfig,
                 resume: str | None):
        check_trainer(trainer)
        set_threads(trainer.num_threads)
        self.t, self.out_dir = trainer, out_dir
        init_distributed()
        self.rank, self.world = rank(), world_size()
        self.is_main = self.rank == 0
        self.device = train_device(trainer.device)
        seed_everything(trainer.seed + self.rank)  # ranks draw different dropout; DDP syncs the initial weights
        self.ckpt_dir = out_dir / "checkpoints" / "last"
        self.best_dir = out_dir / "checkpoints" / "best"  # trainer.keep_best's
        self.best = Best(trainer.keep_best) if trainer.keep_best else None
        self.resume = self._resume_path(resume)
        if self.resume != self.ckpt_dir:
            check_checkpoint_target(self.ckpt_dir)
        self.autocast = autocast(self.device, trainer.precision)
        self.logger = build_logger(logger, out_dir, config, rank=self.rank)  # first: a bad wandb setting fails now
        self._finite: torch.Tensor | None = None
        self._skipped_now: set[str] = set()
        self._snapshots: dict[str, list[torch.Tensor]] = {}
        self._signal: int | None = None
        self._early = False  # rank 0 found trainer.early_stop evaluations without a new best

    # ---- what a task calls while it builds itself

    def prepare(self, module: nn.Module, *, convnet: bool = False, find_unused: bool = False) -> nn.Module:
        """The module as the train step should call it: channels_last (convnets, `trainer.channels_last`),
        wrapped in DistributedDataParallel under torchrun, compiled (`trainer.compile`). Weights stay shared."""
        if convnet and self.t.channels_last:
            module.to(memory_format=torch.channels_last)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return wrap(module, ddp=self.world > 1, device_ids=ids, find_unused=find_unused, compile=self.t.compile)

    def adamw(self, modules: nn.Module | list[nn.Module]) -> torch.optim.AdamW:
        """AdamW with the trainer's lr/betas/weight decay (decay on Linear/conv weights only); fused on CUDA."""
        return adamw(modules, lr=self.t.lr, betas=self.t.betas, weight_decay=self.t.weight_decay,
                     fused=self.t.fused_adamw and self.device.type == "cuda")

    def check_data(self, train_set: Dataset) -> None:
        """Refuse a batch that this process's share of the training split could never fill (before any model
        is built)."""
        check_batch_fits(self.t, len(train_set) // self.world)

    def main_first(self) -> contextlib.AbstractContextManager:
        """Rank 0 runs the block first (a download, the token cache), then the others."""
        return main_rank_first()

    # ---- what a task calls inside train_step

    def next_batch(self) -> list[torch.Tensor]:
        """The next training batch, on the device."""
        return [x.to(self.device, non_blocking=True) for x in next(self.batches)]

    def micro_batches(self, net: nn.Module) -> Iterator[list[torch.Tensor]]:
        """`trainer.grad_accum` batches; under DDP the gradients are all-reduced only after the last one."""
        for i in range(self.t.grad_accum):
            last = i == self.t.grad_accum - 1
            ddp = ddp_of(net)
            sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
            with sync:
                yield self.next_batch()

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), remembering (without a host sync) whether the loss was finite."""
        finite = torch.isfinite(loss.detach())
        self._finite = finite if self._finite is None else self._finite & finite
        loss.backward()

    def optimizer_step(self, name: str) -> bool:
        """Clip, then step `optimizers[name]`, unless the loss or the gradient norm is not finite (on any rank):
        then skip it (no update, the module's buffers put back) and return False."""
        optimizer, module = self.task.optimizers[name], self.task.modules[name]
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.t.grad_clip or math.inf) if params else torch.zeros(())
        ok = torch.isfinite(norm).to(self.device)
        if self._finite is not None:
            ok = ok & self._finite
        self._finite = None
        if self.world > 1:
            ok = ok.to(torch.int32)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if bool(ok):
            optimizer.step()
        else:
            self._skipped_now.add(name)
            with torch.no_grad():
                for buf, saved in zip(module.buffers(), self._snapshots[name], strict=True):
                    buf.copy_(saved)
        optimizer.zero_grad(set_to_none=True)
        return bool(ok)

    # ---- the loop

    def fit(self, task: Task) -> dict[str, Any]:
        """Train `task` to trainer.max_steps (from its checkpoint when resuming), then evaluate it."""
        t = self.t
        self.task = task
        self.batches = BatchStream(task.train_set, t.batch_size, t.seed, t.num_workers)
        for module in task.modules.values():
            module.train()
        self.ema = EMA(task.model, t.ema_decay) if t.ema_decay else None
        start, skipped = 0, {name: 0 for name in task.optimizers}  # skipped updates, per optimizer
        if self.resume is not None:
            start, skipped = restore(str(self.resume), task, self.ema, self.batches, t, rank=self.rank,
                                     world=self.world, device=self.device, say=self.say, best=self.best)
        if self.is_main and self.logger.path is not None:
            _drop_rows_after(self.logger.path, start)  # a resumed run logs those steps again
        global_batch = t.batch_size * t.grad_accum * self.world
        self.say(f"{task.describe()}; on {self.device}"
                 + (f" x {self.world} processes" if self.world > 1 else "")
                 + f"; batch {global_batch} = {t.batch_size} per process x {t.grad_accum} accumulated"
                 + (f" x {self.world} processes" if self.world > 1 else ""))
        if self.best is not None and task.eval_split == "test":
            self.say(f"trainer.keep_best={t.keep_best} chooses on the test split, as this data holds no images out; "
                     "hold some out (dataset.val_size=N) to keep the test numbers honest")

        bad_in_a_row = 0
        done = start
        last_eval: tuple[int, dict[str, Any]] | None = None  # (step, results) of the latest evaluation
        bar = progress(total=t.max_steps, initial=start, desc=task.stage, enabled=t.progress_bar and self.is_main)
        with self._signals():
            for step in range(start, t.max_steps):
                lr = lr_at(step, lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps)
                for optimizer in task.optimizers.values():
                    set_lr(optimizer, lr)
                self._snapshots = {name: [b.detach().clone() for b in m.buffers()] for name, m in task.modules.items()}
                self._skipped_now = set()
                logs = task.train_step(self, step)
                done = step + 1
                # The model's own update decides the step's health; another optimizer's skipped update (the
                # VQ-GAN's discriminator) is counted, and counts towards max_bad_steps, but leaves the model's
                # EMA, evaluation and checkpoint alone.
                healthy = "model" not in self._skipped_now
                if self._skipped_now:
                    for name in self._skipped_now:
                        skipped[name] += 1
                    bad_in_a_row += 1
                    what = "step skipped" if not healthy else f"{', '.join(sorted(self._skipped_now))} update skipped"
                    bar.write(f"step {done}: non-finite loss or gradients in {', '.join(sorted(self._skipped_now))}; "
                              f"{what}")
                    if bad_in_a_row >= t.max_bad_steps:
                        self._stop_bad(done, bad_in_a_row, lr)
                else:
                    bad_in_a_row = 0
                if healthy and self.ema is not None:
                    self.ema.update(task.model, step)
                bar.update(1)
                if step % t.log_every == 0 or done == t.max_steps:
                    self.logger.log({**logs, "train/lr": lr, **_skip_counts(skipped)}, step=done)
                    if "train/loss" in logs:
                        bar.set_postfix(loss=f"{float(logs['train/loss']):.4f}")
                # Weights whose last update went non-finite are not evaluated, drawn or saved: the checkpoint on
                # disk stays the last good one.
                if not healthy and done == t.max_steps:
                    self._stop_bad(done, bad_in_a_row, lr)
                if healthy and done % t.eval_every == 0 and done != t.max_steps and self.is_main:  # final follows
                    with rng_isolated():  # the training steps' random streams go on as if it never ran
                        val = task.evaluate(self.eval_model)
                    self.logger.log(_scalars("val", val), step=done)
                    bar.write(f"step {done}: {task.summary(val)}")
                    last_eval = (done, val)
                    self._keep_best(val, done)
                if healthy and (done % t.sample_every == 0 or done == t.max_steps or self._early) and self.is_main:
                    with rng_isolated():
                        path = task.snapshot(self.eval_model, done)
                    if path is not None:
                        self.logger.log_image(f"val/{path.parent.name}", path, step=done)
                saved = healthy and (done % t.checkpoint_every == 0 or done == t.max_steps)
                if saved:
                    self.save(done, skipped)
                signalled, early = self._stop_requested()
                if signalled or early:
                    if healthy and not saved:
                        self.save(done, skipped)
                if signalled:
                    bar.close()
                    self.logger.finish()
                    raise self._interrupted(done, healthy)
                if early:
                    bar.write(f"step {done}: stopped early: {t.keep_best} has not improved for {t.early_stop} "
                              "evaluations (trainer.early_stop)")
                    break
        bar.close()
        if start >= t.max_steps:
            self.save(start, skipped)

        results: dict[str, Any] = {}
        if self.is_main:
            if last_eval is not None and last_eval[0] == done:  # stopped early just after evaluating these weights
                results = last_eval[1]
            else:
                results = task.evaluate(self.eval_model)
                self.logger.log(_scalars("val", results), step=done)
                self._keep_best(results, done)
            if self.best is not None:
                results = {**results, "best": {**self.best.state_dict(), "checkpoint": str(self.best_dir)}}
            (self.out_dir / "eval.json").write_text(json.dumps(results, indent=2))
            self.say(f"{task.eval_split} split: {task.summary(results)}")
            self.say(f"checkpoint: {self.ckpt_dir}")
            if self.best is not None:
                self.say(f"best {task.eval_split} {self.best.metric} {self.best.value:.4g} at step {self.best.step}: "
                         f"{self.best_dir}")
        self.logger.finish()
        self.barrier()
        return results

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation, pictures and sample.py use: the EMA weights when kept, else the trained ones."""
        return self.ema.module if self.ema is not None else self.task.model

    def say(self, text: str) -> None:
        """Print on rank 0 only."""
        if self.is_main:
            print(text, flush=True)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # ---- save and restore

    def save(self, step: int, skipped: dict[str, int]) -> None:
        """Write checkpoints/last (rank 0), with every rank's RNG state; all ranks wait for it."""
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if self.is_main:
            task = self.task
            state = capture(task, self.batches, step=step, max_steps=self.t.max_steps, skipped=skipped, rngs=rngs,
                            best=self.best)
            save_checkpoint(self.ckpt_dir, task.model, stage=task.stage, arch=task.arch, meta=task.meta, step=step,
                            train_state=state, ema=self.ema.module if self.ema is not None else None)
        self.barrier()

    def _keep_best(self, results: dict[str, Any], step: int) -> None:
        """Rank 0, after an evaluation: a new best of trainer.keep_best writes checkpoints/best (the weights
        evaluated: EMA and raw, as checkpoints/last, without the train state); enough evaluations without one set
        the early stop."""
        if self.best is None:
            return
        if self.best.update(results, step):
            task = self.task
            meta = {**task.meta, "best": {"metric": self.best.metric, "value": self.best.value}}
            save_checkpoint(self.best_dir, task.model, stage=task.stage, arch=task.arch, meta=meta, step=step,
                            ema=self.ema.module if self.ema is not None else None)
        elif self.t.early_stop and self.best.stale >= self.t.early_stop:
            self._early = True

    def _resume_path(self, resume: str | None) -> Path | None:
        """resume=true: this run dir's checkpoints/last; resume=<dir>: that checkpoint; None: a fresh run."""
        if resume is None or str(resume).lower() == "false":
            return None
        if str(resume).lower() == "true":
            try:
                read_meta(self.ckpt_dir)  # (or the copy a save killed between its renames left)
            except UserError:
                raise UserError(f"resume=true but this run dir has no checkpoint ({self.ckpt_dir}); point "
                                "hydra.run.dir at the run to continue, or pass resume=<checkpoint dir>") from None
            return self.ckpt_dir
        return Path(resume).expanduser()

    # ---- signals and bad steps

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the step, checkpoint, stop (see fit). A second one exits at once."""
        if not threading_main():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                print(f"\n{signal.Signals(signum).name} again: exiting now; the last checkpoint in {self.ckpt_dir} "
                      "stays", file=sys.stderr, flush=True)
                os._exit(128 + signum)
            self._signal = signum
            if self.is_main:
                print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint (send it "
                      "again to exit at once)", file=sys.stderr, flush=True)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_requested(self) -> tuple[bool, bool]:
        """Whether any rank got a signal, and whether rank 0 called an early stop (all ranks stop after the same
        step)."""
        flag, early = self._signal or 0, int(self._early)
        if self.world > 1:
            box = torch.tensor([flag, early], dtype=torch.int32, device=self.device)
            dist.all_reduce(box, op=dist.ReduceOp.MAX)
            flag, early = (int(v) for v in box)
        if flag and self._signal is None:
            self._signal = flag
        return bool(flag), bool(early)

    def _interrupted(self, step: int, saved: bool) -> Interrupted:
        name = signal.Signals(self._signal).name
        what = "checkpoint saved in" if saved else "its last step was not finite, so the last good checkpoint stays in"
        return Interrupted(f"{name} at step {step}: {what} {self.ckpt_dir}; continue with: "
                           f"{resume_command(self.out_dir)}", self._signal)

    def _stop_bad(self, step: int, count: int, lr: float) -> None:
        limit = f" (trainer.max_bad_steps={self.t.max_bad_steps})" if count >= self.t.max_bad_steps else ""
        kept = (f"the last good checkpoint stays in {self.ckpt_dir}" if self.ckpt_dir.exists()
                else "no checkpoint was written")
        raise UserError(f"step {step}: the loss or gradients were not finite for {count} steps in a row{limit}; "
                        f"stopped, {kept}; lower trainer.lr (it was {lr:.3g}) or set trainer.grad_clip, then "
                        "resume or start again")


def threading_main() -> bool:
    """Signal handlers can only be installed from the main thread."""
    import threading

    return threading.current_thread() is threading.main_thread()


def resume_command(out_dir: Path) -> str:
    """This very command line, pointed at its run dir with resume=true (what to type to continue)."""
    keep = [a for a in sys.argv[1:] if not a.startswith(("resume=", "hydra.run.dir=", "out_dir="))]
    launcher = f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)}" if distributed() else "python"
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "scripts/<stage>.py"
    where = [f"hydra.run.dir={out_dir.resolve()}", "out_dir=."]  # the run dir is out_dir itself, wherever it was
    return " ".join([launcher, shlex.quote(script), *map(shlex.quote, keep + where), "resume=true"])


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep only metrics.jsonl rows up to `step` (a resumed run logs the later steps again); atomic rewrite."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a kill: drop it
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _skip_counts(skipped: dict[str, int]) -> dict[str, int]:
    """train/skipped_steps (the model's skipped updates) and train/skipped_<name>_steps for the other optimizers."""
    return {"train/skipped_steps" if name == "model" else f"train/skipped_{name}_steps": count
            for name, count in skipped.items()}


def _scalars(prefix: str, results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of `results` as `prefix/key` (records such as an FID's protocol go to eval.json only)."""
    return {f"{prefix}/{k}": v for k, v in results.items() if v is not None and not isinstance(v, (dict, list))}
