"""Where metrics go: a JSONL file always, plus Weights & Biases when asked.

Only rank 0 logs; other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any

import torch

from vqgpt.config import LoggerConfig
from vqgpt.errors import UserError

WANDB_MODES = ("online", "offline", "disabled")
WANDB_DIRS = ("WANDB_CACHE_DIR", "WANDB_DATA_DIR")
_USER_WANDB_DIRS = {key: os.environ.get(key) for key in WANDB_DIRS}  # as the user started the process
WANDB_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's older names, still valid in WANDB_MODE


def wandb_api_key_present() -> bool:
    """True when wandb could authenticate without asking: WANDB_API_KEY or an api.wandb.ai netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None) -> str:
    """The configured mode, else $WANDB_MODE, else online with an API key and offline without one (never a login
    prompt); a bad value is a UserError naming where it came from (logger.mode or the WANDB_MODE variable)."""
    source = "logger.mode"
    if mode is None and os.environ.get("WANDB_MODE"):
        mode, source = os.environ["WANDB_MODE"], "the environment variable WANDB_MODE"
        mode = WANDB_ALIASES.get(mode, mode)
        if mode not in WANDB_MODES:
            raise UserError(f"{source} is {os.environ['WANDB_MODE']!r}, not one of {', '.join(WANDB_MODES)}; fix or "
                            "unset it (`unset WANDB_MODE`), or set logger.mode=...")
    if mode is None:
        mode = "online" if wandb_api_key_present() else "offline"
    if mode not in WANDB_MODES:
        raise UserError(f"logger.mode={mode!r} is not one of {', '.join(WANDB_MODES)}; pick one or leave it null")
    if mode == "online" and not wandb_api_key_present():
        where = "logger.mode=online" if source == "logger.mode" else "WANDB_MODE=online (environment variable)"
        raise UserError(f"{where} but no wandb API key is set; run `wandb login`, set WANDB_API_KEY, "
                        "or use logger.mode=offline")
    return mode


class Logger:
    """Writes scalars to `metrics.jsonl` in the run dir; subclasses send them elsewhere too."""

    def __init__(self, run_dir: str | Path | None):
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start = time.time()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar metrics (keys like `train/loss`, `val/psnr`, `codebook/usage`) at a step."""
        if self.path is None:
            return
        row = {"step": step, "time": round(time.time() - self._start, 3)}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        """Record an image already saved to disk (the run dir keeps the file itself)."""

    def finish(self) -> None:
        """Flush and close."""


class WandbLogger(Logger):
    """Logger that also sends to Weights & Biases (offline when no API key is set)."""

    def __init__(self, cfg: LoggerConfig, run_dir: str | Path, config: dict[str, Any]):
        super().__init__(run_dir)
        import wandb  # imported here: a slow import that only this logger needs

        mode = resolve_wandb_mode(cfg.mode)
        self._wandb = wandb
        # wandb's own cache and debug logs go to ~/.cache/wandb unless told otherwise: keep them in this run's
        # dir (a WANDB_CACHE_DIR / WANDB_DATA_DIR the user set still wins).
        for key in WANDB_DIRS:
            if _USER_WANDB_DIRS[key] is None:
                os.environ[key] = str(Path(run_dir) / "wandb" / "cache")
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name,
            tags=list(cfg.tags),
            mode=mode,
            dir=str(run_dir),
            config=config,
            # A bad network must not hang a training run: give up on the server after a minute.
            settings=wandb.Settings(init_timeout=60, silent=True),
        )
        if mode == "offline":  # silent=True hides wandb's own notice; this is the one line that matters
            why = ("logger.mode=offline" if cfg.mode else f"WANDB_MODE={os.environ['WANDB_MODE']}"
                   if os.environ.get("WANDB_MODE") else "no wandb API key is set")
            print(f"wandb: running offline ({why}); upload this run later with `wandb sync "
                  f"{self.run.settings.sync_dir}`")

    def log(self, metrics: dict[str, float], step: int) -> None:
        super().log(metrics, step)
        self.run.log({k: _scalar(v) for k, v in metrics.items()}, step=step)

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg: LoggerConfig, run_dir: str | Path, config: dict[str, Any], rank: int = 0) -> Logger:
    """The logger named by `cfg.name`; ranks other than 0 get one that writes nothing."""
    if rank != 0:
        return Logger(None)
    if cfg.name == "none":
        return Logger(run_dir)
    if cfg.name == "wandb":
        return WandbLogger(cfg, run_dir, config)
    raise UserError(f"logger={cfg.name!r} is unknown; use logger=none or logger=wandb")


def _scalar(v: Any) -> Any:
    """A plain JSON value: tensors as floats, NaN/Inf as null (JSON has no NaN)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().float().item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
