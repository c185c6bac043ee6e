"""Classify images from a trained GPT's features, as Image GPT does: a linear probe or fine-tuning.

    python scripts/classify.py checkpoint_gpt=outputs/train_gpt/<date>/checkpoints/last                 # probe
    python scripts/classify.py checkpoint_gpt=... mode=finetune trainer.max_steps=2000 gen_weight=0.5

Works for any GPT over labelled data (VQ codes, pixel palette, patches). Writes to the run dir: config.yaml,
eval.json (test accuracy; the probe's per-block accuracies), and for finetune metrics.jsonl and checkpoints/last.
"""

from vqgpt import cli
from vqgpt.config import ClassifyRun


@cli.main("classify")
def main(run: ClassifyRun) -> None:
    from vqgpt.train.gpt_classifier import classify  # after the command line is checked: errors come in a second

    classify(run, *cli.make_run_dir(run))


if __name__ == "__main__":
    main()
