"""Console progress bars, for every layer (data preparation, evaluation, sampling, training)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr (rate in it/s and ETA built in); disabled off a terminal-less rank or on request."""
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
