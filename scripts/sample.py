"""Sample images from a GPT over a tokenizer's tokens; both models are rebuilt from their checkpoints alone.

    python scripts/sample.py checkpoint_vae=.../tokenizer/checkpoints/last checkpoint_gpt=.../gpt/checkpoints/last
    python scripts/sample.py ... sampling.class_label=Sneaker sampling.cfg_scale=2 sampling.top_k=100
    python scripts/sample.py ... gif=true completion=true
    python scripts/sample.py ... checkpoint_classifier=... sampling.accept_n=8     # classifier rejection

Writes to the run dir (out_dir): config.yaml, samples.png (one row per class, or a square when unconditional),
images/<class>_<i>.png, and on request decoding.gif and completion.png. See docs/sampling.md.
"""

import torch

from vqgpt import cli
from vqgpt.config import SampleRun
from vqgpt.device import pick_device
from vqgpt.generate.pipeline import check_sample_request, load_models, with_recorded_sampling
from vqgpt.generate.writer import check_outputs, plan_outputs, write_outputs


@cli.main("sample", precheck=check_sample_request)
def main(run: SampleRun) -> None:
    torch.set_grad_enabled(False)
    run.sampling = with_recorded_sampling(run.sampling, run.checkpoint_gpt, cli.given_keys("sampling."))
    models = load_models(run, pick_device(run.device))  # every check before anything is written
    plan = plan_outputs(run, models)
    check_outputs(cli.resolve_out_dir(run.out_dir), plan)
    out_dir, _ = cli.make_run_dir(run)
    for path in write_outputs(run, models, out_dir, plan):
        print(f"wrote {path}")
    print(f"images: {out_dir / 'images'}")


if __name__ == "__main__":
    main()
