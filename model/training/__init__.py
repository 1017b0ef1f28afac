"""Training Neuroverse3D (torch, numpy, nibabel): data, task synthesis, augmentation, losses,
the trainer and data-parallel helpers. ``neuroverse3d-train`` is :func:`.cli.main`.

    from neuroverse_bids.model.training import Trainer, TrainConfig
    Trainer(TrainConfig(manifest="manifest.json", channels=[4, 8, 16], grid=[32, 32, 32])).fit()
"""
from .config import TrainConfig
from .losses import gradient_loss, smooth_l3_l1, task_loss
from .manifest import DatasetEntry, Manifest, Subject, load_manifest, save_manifest
from .synthesis import DEGRADATIONS, TASKS, degrade
from .trainer import Trainer

__all__ = ["DEGRADATIONS", "DatasetEntry", "Manifest", "Subject", "TASKS", "TrainConfig",
           "Trainer", "degrade", "gradient_loss", "load_manifest", "save_manifest",
           "smooth_l3_l1", "task_loss"]
