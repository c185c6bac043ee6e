"""Measure a tokenizer or a GPT on the test split; every FID is saved with its protocol.

    python scripts/evaluate.py stage=tokenizer checkpoint_vae=.../tokenizer/checkpoints/last
    python scripts/evaluate.py stage=gpt checkpoint_vae=... checkpoint_gpt=... fid.num_samples=10000
    python scripts/evaluate.py stage=gpt ... cfg_scales=[1,1.5,2,3]        # one FID per scale
    python scripts/evaluate.py stage=gpt ... checkpoint_classifier=...       # + per-class accuracy of samples

Writes eval.json (every number, each FID with its protocol record) to the run dir and prints a table. The real
images' Inception statistics are computed once per data config and cached. See docs/evaluation.md.
"""

import json

import torch

from vqgpt import cli
from vqgpt.config import EvaluateRun


def precheck(run: EvaluateRun) -> None:
    from vqgpt.eval.evaluate import check_run

    check_run(run)


@cli.main("evaluate", precheck=precheck)
def main(run: EvaluateRun) -> None:
    from vqgpt.device import pick_device
    from vqgpt.eval.evaluate import evaluate_gpt, evaluate_tokenizer, table
    from vqgpt.generate.pipeline import with_recorded_sampling

    torch.set_grad_enabled(False)
    device = pick_device(run.device)
    if run.stage == "gpt":
        run.sampling = with_recorded_sampling(run.sampling, run.checkpoint_gpt, cli.given_keys("sampling."))
    out_dir, _ = cli.make_run_dir(run)
    results = (evaluate_tokenizer if run.stage == "tokenizer" else evaluate_gpt)(run, device)
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {out_dir / 'eval.json'}")


if __name__ == "__main__":
    main()
