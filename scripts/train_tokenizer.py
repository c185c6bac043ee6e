"""Stage 1: train a tokenizer (the VQ-GAN by default), then evaluate it on the test split.

    python scripts/train_tokenizer.py dataset=cifar10
    python scripts/train_tokenizer.py experiment=tokenizer_demo            # what `make demo` runs
    python scripts/train_tokenizer.py --help                               # config groups and every option

Writes to the run dir: config.yaml, metrics.jsonl, reconstructions/step_*.png (inputs above, reconstructions
below), checkpoints/last (the tokenizer checkpoint the GPT stage reads) and eval.json.
"""

from vqgpt import cli
from vqgpt.config import TrainTokenizerRun


@cli.main("train_tokenizer")
def main(run: TrainTokenizerRun) -> None:
    from vqgpt.train.tokenizer import train_tokenizer  # after the command line is checked: errors come in a second

    train_tokenizer(run, *cli.make_run_dir(run))


if __name__ == "__main__":
    main()
