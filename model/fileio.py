"""File I/O of the model package: the one atomic writer (outputs appear whole or not at all)
and the one reader of 3D NIfTI volumes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


class VolumeShapeError(ValueError):
    """A NIfTI image that is not one 3D volume."""


#: the names :func:`write_atomic` gives its temporary files (``.<name>.<random>.tmp<ext>``)
ATOMIC_TEMPORARY_GLOB = ".*.tmp*"


def write_atomic(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps the extension (``.nii.gz``, ``.png``...) so writers that infer the
    format from it work. The file gets the usual permissions (0666 minus the umask) instead of
    ``mkstemp``'s 0600. On any error the temporary file is removed and the error propagates
    (``OSError`` when the folder cannot be written).
    """
    path = Path(path)
    extension = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{extension}", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


#: fewest voxels along each axis of a volume: a 2D image or a slab of a few slices holds no 3D
#: anatomy for the network to match (it would be padded or resampled into mostly empty space)
MIN_SLICES = 4


def as_volume(data: np.ndarray, path) -> np.ndarray:
    """``data`` as one 3D volume of at least :data:`MIN_SLICES` voxels along each axis (a 4D
    image holding a single volume is squeezed); else :class:`VolumeShapeError` naming the file,
    its shape and the fix. The one shape check of every image that enters the app."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    shape = tuple(int(n) for n in data.shape)
    if data.ndim > 3:
        raise VolumeShapeError(f"{path}: expected a 3D volume, got shape {shape}; extract one "
                               "volume (e.g. the first of a 4D series) before using it")
    if data.ndim < 3 or min(shape) < MIN_SLICES:
        what = f"a {data.ndim}D image" if data.ndim < 3 else "a 3D image with too few slices"
        raise VolumeShapeError(f"{path}: {what} (shape {shape}); Neuroverse3D needs a 3D volume "
                               f"with several slices in each direction (at least {MIN_SLICES}): "
                               "give the whole 3D scan, not a single slice or a 2D image")
    return data


def read_volume(path, dtype=np.float32):
    """Load a 3D NIfTI -> (image, data array of ``dtype``), its shape checked by
    :func:`as_volume` (nibabel's own errors pass through for unreadable files)."""
    import nibabel as nib

    img = nib.load(str(path))
    return img, as_volume(np.asanyarray(img.dataobj, dtype=dtype), path)
