"""Tokenize a dataset once with a tokenizer checkpoint, for GPT training (train_gpt.py does this itself
when the cache is missing).

    python scripts/extract_codes.py checkpoint_vae=outputs/train_tokenizer/.../checkpoints/last
    python scripts/extract_codes.py checkpoint_vae=... hflip_copies=true cache_dir=/fast/disk/codes
"""

from vqgpt import cli
from vqgpt.config import TrainGPTRun
from vqgpt.data.token_cache import prepare_token_cache
from vqgpt.device import pick_device


@cli.main("train_gpt")
def main(run: TrainGPTRun) -> None:
    cache, header = prepare_token_cache(run.checkpoint_vae, run.dataset, run.cache_dir, run.hflip_copies,
                                        device=pick_device(run.trainer.device))
    sizes = ", ".join(f"{split} {n}" for split, n in header["splits"].items())
    print(f"token cache {cache}: {sizes} images of {header['grid'][0]}x{header['grid'][1]} tokens, "
          f"K={header['codebook_size']}, tokenizer {header['tokenizer_hash']}")


if __name__ == "__main__":
    main()
