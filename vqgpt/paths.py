"""vqgpt's own cache: the only place outside a run dir that vqgpt writes to unless a path is given.

    $VQGPT_CACHE, else $XDG_CACHE_HOME/vqgpt, else ~/.cache/vqgpt
      data/<dataset>/     downloaded datasets
      weights/            pretrained weights (LPIPS's VGG16, FID's Inception), converted or downloaded
      tokens/<key>/       token caches, one per (tokenizer weights, data config)
      fid_stats/          FID reference statistics, one file per (data config, split, protocol)
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A path inside vqgpt's cache (not created)."""
    root = os.environ.get("VQGPT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vqgpt"
    return base.joinpath(*parts)
