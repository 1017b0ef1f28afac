"""Neuroverse3D model core (torch only): network, APSP, checkpoints, inference.

Public entry points::

    from neuroverse_bids.model import Neuroverse3D, load_checkpoint, load_default_model

The names are imported on first use, so that the torch-free modules of this package (the exit
codes, the inference options) are cheap to import (``--help`` must not load torch).
"""
from .lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint", "convert_released": "checkpoint",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "NetworkConfig": "network", "Neuroverse3D": "network",
    "load_default_model": "pretrained", "default_model_path": "pretrained",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
