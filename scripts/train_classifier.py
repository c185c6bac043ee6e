"""Train the image classifier that scores samples for classifier rejection (sample.py sampling.accept_n=N).

    python scripts/train_classifier.py dataset=fashionmnist_small dataset.image_size=32 dataset.resize=pad

Train it on the data config the tokenizer saw (same image_size and channels; sample.py checks). Writes to the
run dir: config.yaml, metrics.jsonl, checkpoints/last, eval.json (test accuracy).
"""

from vqgpt import cli
from vqgpt.config import TrainClassifierRun


@cli.main("train_classifier")
def main(run: TrainClassifierRun) -> None:
    from vqgpt.train.image_classifier import (
        train_classifier,  # after the command line is checked: errors come in a second
    )

    train_classifier(run, *cli.make_run_dir(run))


if __name__ == "__main__":
    main()
