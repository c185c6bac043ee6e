"""What every benchmark records beside its numbers: the command, the machine, the versions, the commit; plus
interleaved timing and peak memory. Imported by the scripts in this folder (run as `python benchmarks/x.py`)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from vqgpt.config import CONFIG_DIR, GPTConfig, TrainTokenizerRun, register_configs, to_object
from vqgpt.tokenizers.quantizers import Quantizer

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """What the timings were taken on."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_at_end": load}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cpu_model() -> str:
    """'AMD EPYC' or the like, from /proc/cpuinfo (CPU timings depend on it), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def machine_line() -> str:
    """'2-core AMD EPYC, no GPU (torch 2.x)' or the GPU's name: how a results table names its machine."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"{os.cpu_count()}-core {cpu_model()}, no GPU (torch {torch.__version__})"


def git_state() -> dict:
    """The commit the numbers belong to, and whether the tree had local changes."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def package_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def command_line() -> str:
    """The command that ran this benchmark, relative to the repository root."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def write_result(out: Path, started: datetime.datetime, result: dict, packages: tuple[str, ...] = ()) -> None:
    """`result` plus the command, date, machine and versions as JSON at `out`, never half-written."""
    record = {
        "command": command_line(),
        "date_utc": started.isoformat(timespec="seconds"),
        "duration_seconds": round((now() - started).total_seconds(), 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "vqgpt": package_version("vqgpt"), **{p: package_version(p) for p in packages},
                     **git_state()},
        "machine": machine(),
        **result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"\nwrote {out}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: dict[str, Callable[[], object]], runs: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case, the cases taking turns run by run (so a slow spell of a shared machine
    hits all of them); `warmup` untimed rounds first."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for run in range(warmup + runs):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if run >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def _status_kib(field: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in KiB (Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory `fn` adds above what was allocated before it, MiB: the CUDA allocator's peak on GPU; on CPU
    the peak resident set (reset through /proc/self/clear_refs, Linux) minus the resident set before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) / 1024


def compose_run(overrides: list[str]) -> TrainTokenizerRun:
    """The run config `scripts/train_tokenizer.py <overrides>` would get, typed."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train_tokenizer", overrides=overrides)
    return to_object(cfg)


@contextmanager
def quantizer_step_times() -> Iterator[list[float]]:
    """Timestamps of every training-mode quantizer forward (one per training step) while inside."""
    stamps: list[float] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if isinstance(module, Quantizer) and module.training:
            stamps.append(time.perf_counter())

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield stamps
    finally:
        handle.remove()


def hf_gpt2(cfg: GPTConfig) -> nn.Module:
    """The speed peer: transformers' GPT2LMHeadModel of a vqgpt GPT's size (exact GELU as ours, no dropout,
    SDPA attention, vocabulary = the image tokens), freshly initialised."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_weights, bos_token_id=None, eos_token_id=None))
    model.config._attn_implementation = "sdpa"
    return model

