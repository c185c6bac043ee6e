"""Loggers: metrics land in metrics.jsonl; wandb never asks for a login or hangs without a key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqgpt.config import LoggerConfig
from vqgpt.errors import UserError
from vqgpt.train.loggers import Logger, build_logger, resolve_wandb_mode


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "missing-netrc"))


def test_none_logger_writes_jsonl(tmp_path):
    logger = build_logger(LoggerConfig(name="none"), tmp_path, config={})
    logger.log({"train/loss": torch.tensor(1.5), "codebook/usage": 0.25}, step=3)
    logger.log({"train/loss": 1.0}, step=4)
    logger.finish()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4]
    assert rows[0]["train/loss"] == 1.5 and rows[0]["codebook/usage"] == 0.25


def test_other_ranks_write_nothing(tmp_path):
    logger = build_logger(LoggerConfig(name="wandb"), tmp_path, config={}, rank=1)
    assert type(logger) is Logger
    logger.log({"train/loss": 1.0}, step=0)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wandb_mode_is_offline_without_a_key(no_wandb_key):
    assert resolve_wandb_mode(None) == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"


def test_wandb_mode_is_online_with_a_key(no_wandb_key, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(None) == "online"


def test_wandb_online_without_a_key_is_a_clear_error(no_wandb_key):
    with pytest.raises(UserError, match="no wandb API key"):
        resolve_wandb_mode("online")
    with pytest.raises(UserError, match="logger.mode='sometimes'"):
        resolve_wandb_mode("sometimes")


@pytest.mark.parametrize("value", ["bogus", "online"])
def test_bad_wandb_mode_environment_variable_is_named_as_such(no_wandb_key, monkeypatch, value):
    """Regression: WANDB_MODE=bogus was blamed on logger.mode, which the user never set."""
    monkeypatch.setenv("WANDB_MODE", value)
    with pytest.raises(UserError, match="WANDB_MODE") as err:
        resolve_wandb_mode(None)
    assert "logger.mode=" + value not in str(err.value) and "\n" not in str(err.value)
    assert resolve_wandb_mode("disabled") == "disabled"  # logger.mode, when set, wins over the variable


def test_wandb_mode_environment_variable_takes_wandbs_old_names(no_wandb_key, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(None) == "offline"


def test_unknown_logger_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="logger='tensorboard'"):
        build_logger(LoggerConfig(name="tensorboard"), tmp_path, config={})


def test_wandb_disabled_run_logs_without_network(no_wandb_key, tmp_path):
    logger = build_logger(LoggerConfig(name="wandb", mode="disabled"), tmp_path, config={"a": 1})
    logger.log({"train/loss": 2.0}, step=1)
    logger.finish()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 2.0


def test_wandb_without_a_key_runs_offline_says_so_and_how_to_upload(no_wandb_key, tmp_path, capsys):
    logger = build_logger(LoggerConfig(name="wandb"), tmp_path, config={"a": 1})
    logger.log({"train/loss": 2.0}, step=1)
    logger.finish()
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb"))
    home = Path.home()  # the fixture's private HOME: wandb's cache and debug logs stay in the run dir
    assert not (home / ".cache" / "wandb").exists() and list((tmp_path / "wandb" / "cache").iterdir())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wandb:")]
    assert lines == [f"wandb: running offline (no wandb API key is set); upload this run later with "
                     f"`wandb sync {run}`"]
