"""Neuroverse3D model core (torch only): network, APSP, checkpoints, inference.

Public entry points::

    from neuroverse_bids.model import Neuroverse3D, load_checkpoint
"""
from .checkpoint import CheckpointError, convert_released, load_checkpoint, save_checkpoint
from .network import NetworkConfig, Neuroverse3D

__all__ = [
    "CheckpointError",
    "NetworkConfig",
    "Neuroverse3D",
    "convert_released",
    "load_checkpoint",
    "save_checkpoint",
]
