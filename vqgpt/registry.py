"""The model registry: which class (and config dataclass) a checkpoint's `arch` name rebuilds.

    @register_model("vqgan", VQGANConfig)
    class VQGAN(Tokenizer): ...

vqgpt's own architectures (every module under vqgpt/tokenizers and vqgpt/models) are imported on demand, so
loading one of their checkpoints needs no import by the caller and a new one needs no list to join; a model of
your own registers itself when its module is imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from vqgpt.errors import UserError

# The packages whose modules hold vqgpt's own architectures: every module in them is imported the first time a
# checkpoint names an arch not registered yet, so a new model or tokenizer file registers itself by its decorator.
BUILTIN_PACKAGES = ("vqgpt.tokenizers", "vqgpt.models")


M = TypeVar("M", bound=nn.Module)
_REGISTRY: dict[str, tuple[type[nn.Module], type]] = {}  # arch -> (model class, config dataclass)


def register_model(arch: str, config_cls: type) -> Callable[[type[M]], type[M]]:
    """Class decorator: checkpoints of `arch` rebuild as `model_cls(config_cls(**model_config))`."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"register_model({arch!r}): config_cls must be a dataclass, got {config_cls!r}")

    def register(model_cls: type[M]) -> type[M]:
        old = _REGISTRY.get(arch)
        name = f"{model_cls.__module__}.{model_cls.__qualname__}"
        # The same class again (a reloaded module) is fine; two classes under one name is a bug.
        if old is not None and f"{old[0].__module__}.{old[0].__qualname__}" != name:
            raise ValueError(f"arch {arch!r} is already registered to {old[0].__qualname__}, not {name}")
        _REGISTRY[arch] = (model_cls, config_cls)
        return model_cls

    return register


def _import_builtins() -> None:
    """Import every module of BUILTIN_PACKAGES (each registers its classes)."""
    for package_name in BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            importlib.import_module(info.name)


def lookup(arch: str, where: str = "checkpoint") -> tuple[type[nn.Module], type]:
    """(model class, config dataclass) of `arch`, importing vqgpt's own on demand; UserError if unknown."""
    if arch not in _REGISTRY:
        _import_builtins()
    if arch not in _REGISTRY:
        raise UserError(f"{where} has unknown arch {arch!r} (known: {', '.join(sorted(_REGISTRY))}); import the "
                        "module that registers it, or upgrade vqgpt")
    return _REGISTRY[arch]


def arch_of(model: nn.Module) -> str | None:
    """The arch name `model`'s class is registered under (its module registered it when imported), or None."""
    return next((arch for arch, (model_cls, _) in _REGISTRY.items() if type(model) is model_cls), None)


def check_model(model: nn.Module, arch: str) -> None:
    """A caller bug (ValueError) unless `model` is the registered class of `arch` with its config type."""
    if arch not in _REGISTRY:
        raise ValueError(f"arch {arch!r} is not registered; decorate its model class with @register_model")
    model_cls, config_cls = _REGISTRY[arch]
    if not isinstance(model, model_cls) or not isinstance(getattr(model, "config", None), config_cls):
        raise ValueError(f"arch {arch!r} needs a {model_cls.__name__} with .config a {config_cls.__name__}")
