"""Training Neuroverse3D (torch, numpy, nibabel): data, task synthesis, augmentation, losses,
the trainer and data-parallel helpers. ``neuroverse3d-train`` is :func:`.cli.main`.

    from neuroverse_bids.model.training import Trainer, TrainConfig
    Trainer(TrainConfig(manifest="manifest.json", channels=[4, 8, 16], grid=[32, 32, 32])).fit()

The names below are the package's public interface (the BIDS-App's evaluation uses them). They
are imported on first use, so that reading one module (e.g. the task names in :mod:`.synthesis`)
does not load the trainer.
"""
from ..lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "TrainConfig": "config",
    "dice": "losses", "gradient_loss": "losses", "psnr": "losses", "smooth_l3_l1": "losses",
    "soft_dice_loss": "losses", "task_loss": "losses",
    "DatasetEntry": "manifest", "Manifest": "manifest", "Subject": "manifest",
    "load_manifest": "manifest", "read_structures": "manifest", "save_manifest": "manifest",
    "VolumeLoader": "sampling",
    "SEGMENTATION": "synthesis", "TASKS": "synthesis", "make_pair": "synthesis",
    "Trainer": "trainer",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
