"""benchmarks/gpu/run.sh, the GPU run prepared for when a GPU is lent, at toy sizes on the CPU (DRY_RUN=1): every
step runs the code the GPU run will, so the command cannot rot while no GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

OUTPUTS = ["gpt_eval.json", "run.log", "samples.npz", "sampling_speed.json", "tests.txt", "tokenizer_eval.json",
           "tokenizer_speed.json", "training_speed.json"]


@pytest.mark.slow
def test_the_gpu_command_runs_every_step_at_toy_sizes(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "PY": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    log = (tmp_path / "out" / "run.log").read_text() if (tmp_path / "out" / "run.log").exists() else ""
    assert done.returncode == 0, done.stdout + log[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == OUTPUTS  # at most 8 files come back
    assert 'failures="0"' in (tmp_path / "out" / "tests.txt").read_text()
    samples = np.load(tmp_path / "out" / "samples.npz")
    assert samples["images"].shape == (20, 32, 32, 1) and samples["images"].dtype == np.uint8
    assert sorted(set(samples["labels"].tolist())) == list(range(6))  # class-balanced, every class
    training = json.loads((tmp_path / "out" / "training_speed.json").read_text())
    assert {row["case"] for row in training["results"]} == {"vqgpt", "vqgpt_fused", "hf"}
    assert "bits_per_dim" in json.loads((tmp_path / "out" / "gpt_eval.json").read_text())
    assert "== discriminator: ok" in log and "reconstruction: mean logit" in log  # the PatchGAN probe ran
