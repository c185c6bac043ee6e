"""Bad input: `UserError` (scripts print its message on one line and exit 2) and `ArgumentError`, its `ValueError`
for a library argument, named as the caller wrote it; `one_line` shortens another library's error for a message."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any


class UserError(Exception):
    """Bad input (config, path, file) whose message names the problem and the fix, on one line."""

    label = "error"  # the line's prefix
    exit_code = 2


class ArgumentError(UserError, ValueError):
    """A bad argument of a library call, named as the caller wrote it: `VectorQuantize(num_codewords=0)` raises
    a ValueError `num_codewords=0 is invalid: ...`. A caller that built the layer from a config names the full key
    with `argument_prefix` (`tokenizer.quantizer.num_codewords=0 ...` on the command line).

    A message of its own (`message=`) marks each key with `§`, where the prefix goes: `§n_embd=30 is not divisible
    by §n_head=4`."""

    def __init__(self, name: str, value: Any = None, rule: str = "", *, message: str | None = None,
                 prefix: str = ""):
        self.name, self.value, self.rule, self.prefix = name, value, rule, prefix
        self.message = message if message is not None else f"§{name}={value!r} is invalid: {rule}"
        super().__init__(self.message.replace("§", prefix))


@contextlib.contextmanager
def argument_prefix(prefix: str) -> Iterator[None]:
    """Re-raise an ArgumentError of the block with `prefix` before its keys (`"tokenizer."`, `"quantizer."`)."""
    try:
        yield
    except ArgumentError as e:
        raise ArgumentError(e.name, e.value, e.rule, message=e.message, prefix=prefix + e.prefix) from None


def one_line(e: BaseException) -> str:
    """The useful part of a (possibly multi-line) library error, on one line."""
    text = str(e)
    if "Weights only load failed" in text:  # torch's refusal; don't echo its "retry with weights_only=False"
        found = re.search(r"GLOBAL ([\w.]+)", text)  # what the pickle would have called, if it says
        return "it holds pickled objects weights_only loading refuses" + (f" ({found[1]})" if found else "")
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(text) > 160 and ". " in text[:300]:  # a long library message: its first sentence says what broke
        return text[: text.index(". ") + 1]
    return text[:300]
