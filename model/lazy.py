"""Packages whose public names are imported on first use (PEP 562), so that reading one of
their light modules does not load torch or the trainer."""
from __future__ import annotations

from importlib import import_module
from typing import Callable, Dict, Tuple


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``exports`` map a public name to the
    submodule that defines it."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{exports[name]}", package), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
