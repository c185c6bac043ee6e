"""Re-draw a region of real images and keep the rest: inpainting, outpainting, a region re-drawn as another class.

    python scripts/edit.py checkpoint_vae=... checkpoint_gpt=... box=[8,8,24,24]             # 4 test images
    python scripts/edit.py ... images=[shoe.png] mask=hole.png class_label=Sneaker num_variations=8

A masked GPT (gpt.name=maskgit) re-draws exactly the token cells the region touches; a raster GPT every token from
the region's first one on (raster order). Writes to the run dir: config.yaml, edit.png (per image: input | region
grey | variations), edits/<image>_<j>.png. See docs/masked.md.
"""

import torch

from vqgpt import cli
from vqgpt.config import EditRun
from vqgpt.device import pick_device
from vqgpt.generate.pipeline import load_models, with_recorded_sampling
from vqgpt.generate.writer import edit_request, write_edit


@cli.main("edit", precheck=edit_request)
def main(run: EditRun) -> None:
    torch.set_grad_enabled(False)
    run.sampling = with_recorded_sampling(run.sampling, run.checkpoint_gpt, cli.given_keys("sampling."))
    models = load_models(edit_request(run), pick_device(run.device))
    out_dir, _ = cli.make_run_dir(run)
    for path in write_edit(run, models, out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
