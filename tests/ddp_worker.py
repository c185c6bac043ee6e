"""Run by tests/test_distributed.py under torchrun (2 gloo processes on the CPU):

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py <stage> <root> [<vae>]

trains one stage on the engine three times: straight to the end, stopped halfway (as if by SIGTERM), and resumed
from that checkpoint; after each, every rank saves the weights it holds to <root>/<name>_rank<R>.pt.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch
from test_engine import distributed_case, fit

stage, root = sys.argv[1], Path(sys.argv[2])
vae = Path(sys.argv[3]) if len(sys.argv) > 3 else None
rank = int(os.environ["RANK"])
task_cls, run, steps = distributed_case(stage, vae, processes=2)


def keep(task, name: str) -> None:
    state = {f"{m}.{k}": v.detach().cpu() for m, module in task.modules.items() for k, v in module.state_dict().items()}
    torch.save(state, root / f"{name}_rank{rank}.pt")


keep(fit(task_cls, run, root / "straight"), "straight")
keep(fit(task_cls, run, root / "split", stop_after=steps // 2), "stopped")
resumed = fit(task_cls, dataclasses.replace(run, resume="true"), root / "split")
keep(resumed, "resumed")
