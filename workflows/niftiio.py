"""Reading and writing NIfTI volumes with clear errors and atomic writes."""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np

from ..model.fileio import write_atomic as _write_atomic
from .errors import BadInputError, MissingInputError, OutputError


def load_volume(path, dtype=np.float32):
    """Load a 3D NIfTI -> (image, data array). Errors name the file and the fix.

    A 4D image with a single volume is accepted (squeezed); any other non-3D image, a corrupt
    or truncated file, or NaN/infinite values raise :class:`BadInputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj, dtype=dtype)
    except Exception as error:  # nibabel raises many types for damaged files
        raise BadInputError(f"{path}: cannot read this NIfTI file ({error}); it may be corrupt "
                            "or truncated: re-export or re-download it") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadInputError(f"{path}: expected a 3D volume, got shape {data.shape}; extract one "
                            "volume (e.g. the first of a 4D series) before using it")
    if not np.all(np.isfinite(data)):
        raise BadInputError(f"{path}: contains NaN or infinite values; fix or mask them first")
    return img, data


def write_nifti_atomic(data, reference, path, dtype=None):
    """Write ``data`` with ``reference``'s affine and header to ``path`` atomically."""
    path = Path(path)
    array = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    header = reference.header.copy()
    header.set_data_dtype(array.dtype)
    img = nb.Nifti1Image(array, reference.affine, header)
    img.header.set_xyzt_units(*reference.header.get_xyzt_units())
    return write_atomic(path, lambda tmp: nb.save(img, tmp))


def write_atomic(path, write) -> Path:
    """:func:`model.fileio.write_atomic` with an unwritable folder reported as exit 73."""
    try:
        return _write_atomic(path, write)
    except OSError as error:
        raise OutputError(f"{path}: cannot write here ({error.strerror}); choose a writable "
                          "output location or fix its permissions") from None


def write_text_atomic(path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
