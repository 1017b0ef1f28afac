"""The model bundled with the package, in the spirit of UniverSeg's ``universeg(pretrained=True)``.

>>> model = load_default_model()          # Neuroverse3D with the bundled weights, eval mode

The weights and their model card (``neuroverse3d_default.md``: data, training commands,
evaluation) are package data of ``neuroverse_bids.model`` (``pretrained_weights/``).
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_FOLDER = Path(__file__).resolve().parent / "pretrained_weights"
#: version name -> weights file in :data:`WEIGHTS_FOLDER`
VERSIONS = {"default": "neuroverse3d_default.safetensors"}


def default_model_path(version: str = "default") -> Path:
    """The bundled weights file of ``version``; :class:`~.checkpoint.CheckpointNotFoundError` (exit 66) when the
    installation lacks it."""
    from .checkpoint import CheckpointNotFoundError

    if version not in VERSIONS:
        raise ValueError(f"unknown bundled model {version!r}; choose one of {', '.join(VERSIONS)}")
    path = WEIGHTS_FOLDER / VERSIONS[version]
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path}: no bundled model installed; pass --model with a checkpoint (e.g. the "
            "released neuroverse3D.ckpt, see the README) or reinstall the package")
    return path


def resolve_model_path(path=None) -> Path:
    """``path`` made absolute, else the bundled weights (a command's ``--model``)."""
    return Path(path).resolve() if path is not None else default_model_path()


def load_default_model(version: str = "default"):
    """:class:`~.network.Neuroverse3D` with the bundled weights and their metadata (grid,
    template, provenance), in eval mode."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(default_model_path(version))
