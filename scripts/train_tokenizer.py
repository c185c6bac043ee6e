"""Stage 1: train a VQ-GAN tokenizer.

    python scripts/train_tokenizer.py dataset=cifar10
    python scripts/train_tokenizer.py --help          # config groups and every option

Today this script composes and validates the config, writes it to the run dir and builds the train and
test splits; the VQ-GAN model and its training loop arrive with the stage-1 issue, and until then the
script stops with an error that says so.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vqgpt.config import register_configs, to_object
from vqgpt.data import build_dataset
from vqgpt.errors import UserError
from vqgpt.runtime import resolve_out_dir, save_resolved_config, seed_everything, user_errors

register_configs()


@hydra.main(config_path="../configs", config_name="train_tokenizer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run = to_object(cfg)
        out_dir = resolve_out_dir(run.out_dir)
        save_resolved_config(cfg, out_dir)
        seed_everything(run.trainer.seed)
        train_set, test_set = build_dataset(run.dataset, "train"), build_dataset(run.dataset, "test")
        print(f"{run.dataset.name}: {len(train_set)} train / {len(test_set)} test images; config in {out_dir}")
        raise UserError("the VQ-GAN tokenizer is not in this version of vqgpt yet (it is the next issue); "
                        "use scripts/inspect_data.py to check the data meanwhile")


if __name__ == "__main__":
    main()
