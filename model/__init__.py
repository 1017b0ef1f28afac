"""Neuroverse3D model core (torch only): network, APSP, checkpoints, inference.

Public entry points::

    from neuroverse_bids.model import Neuroverse3D, load_checkpoint, load_default_model

The names are imported on first use, so that the torch-free modules of this package (the exit
codes, the inference options) are cheap to import (``--help`` must not load torch).
"""
from importlib import import_module

#: public name -> the module of this package that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint", "convert_released": "checkpoint",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "NetworkConfig": "network", "Neuroverse3D": "network",
    "load_default_model": "pretrained", "default_model_path": "pretrained",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
