"""Stage 2: train a GPT on the token grids of a tokenizer checkpoint.

    python scripts/train_gpt.py                                   # the newest tokenizer under outputs/
    python scripts/train_gpt.py checkpoint_vae=outputs/train_tokenizer/<dataset>/<date>/checkpoints/last
    python scripts/train_gpt.py experiment=gpt_demo checkpoint_vae=...        # what `make demo` runs

The first run tokenizes the dataset once into a token cache (in vqgpt's cache); training then reads only that
cache. Writes to the run dir: config.yaml, metrics.jsonl, samples/step_*.png (one row per class),
checkpoints/last (the GPT checkpoint sample.py reads).
"""

from vqgpt import cli
from vqgpt.config import TrainGPTRun


@cli.main("train_gpt")
def main(run: TrainGPTRun) -> None:
    from vqgpt.train.gpt import train_gpt  # after the command line is checked: errors come in a second

    train_gpt(run, *cli.make_run_dir(run))


if __name__ == "__main__":
    main()
