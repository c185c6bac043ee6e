"""Look at a dataset before training on it: size, classes, pixel statistics and a grid of images.

    python scripts/inspect_data.py dataset=fashionmnist_small
    python scripts/inspect_data.py dataset=cifar10 dataset.root=/data/cifar split=test

Writes to the run dir: config.yaml, summary.json and <dataset>_<split>.png.
"""

from vqgpt import cli
from vqgpt.config import InspectDataRun
from vqgpt.data.inspect import inspect_dataset


@cli.main("inspect_data")
def main(run: InspectDataRun) -> None:
    out_dir, _ = cli.make_run_dir(run)
    inspect_dataset(run, out_dir)


if __name__ == "__main__":
    main()
