"""Load pickles that should hold only plain containers and numpy arrays, refusing anything else.

`pickle.load` runs whatever callable a file names (`os.system` included), so a downloaded pickle is code.
This Unpickler resolves only the few globals that containers of numpy arrays need, so loading a crafted
file raises a UserError before any of its payload runs. (The approach of Python's own docs, "Restricting
Globals": https://docs.python.org/3/library/pickle.html#restricting-globals.)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vqgpt.errors import UserError

# numpy 2 renamed numpy.core to numpy._core (the old name warns); resolve either spelling to the one here.
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"

# Plain ints, floats, str, bytes, lists, tuples and dicts have their own opcodes and never reach
# `find_class`; these are the globals that still show up in files made of them:
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # builtin containers and scalars a protocol-2 pickle builds by calling the type
        *(("builtins", name) for name in ("set", "frozenset", "bytearray", "bytes", "str", "int", "float",
                                         "complex", "bool", "list", "dict", "tuple")),
        # how Python 3 writes `bytes` at protocol <= 2 (e.g. an array's raw buffer)
        ("_codecs", "encode"),
        # numpy arrays: numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.*;
        # _frombuffer is the protocol-5 path for contiguous arrays
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `allowed` globals and raises UserError (naming the file) on others."""

    def __init__(self, file: Any, path: str | Path, allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS,
                 **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.path = str(path)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 files (CIFAR's) say __builtin__; the parent class maps it the same way.
        checked = "builtins" if module == "__builtin__" else module
        if (checked, name) not in self.allowed:
            raise UserError(
                f"refusing to unpickle {self.path}: it calls {module}.{name}, and only plain containers and "
                f"numpy arrays are allowed (is this the right file? re-download it from the original source)"
            )
        if checked.startswith(("numpy.core.", "numpy._core.")):
            module = _NUMPY_CORE + "." + checked.split(".", 2)[2]
        return super().find_class(module, name)


def load(path: str | Path, encoding: str = "latin1",
         allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS) -> Any:
    """Unpickle `path` allowing only containers and numpy arrays; UserError naming the file otherwise."""
    # latin1 maps every byte to one char, so Python 2 str buffers (CIFAR's arrays) come back intact.
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path, allowed=allowed, encoding=encoding).load()
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError, ...
        raise UserError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); re-download it"
                        ) from None
