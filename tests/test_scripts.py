"""Smoke runs of the scripts as a user types them, and their one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run scripts/<name> in `cwd` with a private HOME (no user caches), no network needed."""
    env = {**os.environ, "HOME": str(cwd), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_inspect_data_on_patterns_writes_summary_grid_and_resolved_config(tmp_path):
    out = run_script("inspect_data.py", "dataset=patterns", "dataset.num_train=40", "batch_size=16",
                     "num_images=16", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_items"] == summary["num_read"] == 40
    assert sum(summary["class_counts"].values()) == 40
    assert -1.0 <= summary["pixel_min"] <= summary["pixel_max"] <= 1.0
    assert (run / "patterns_train.png").stat().st_size > 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset"]["num_train"] == 40 and "${" not in (run / "config.yaml").read_text()


def test_missing_dataset_is_one_line_error_with_exit_2(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    out = run_script("inspect_data.py", "dataset=cifar10", f"dataset.root={empty}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "cifar10" in lines[0] and str(empty) in lines[0] and "download" in lines[0]


def test_train_tokenizer_says_plainly_that_the_model_is_missing(tmp_path):
    out = run_script("train_tokenizer.py", "dataset=patterns", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and "not in this version" in out.stderr
    assert (tmp_path / "run" / "config.yaml").exists()
