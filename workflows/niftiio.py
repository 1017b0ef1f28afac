"""NIfTI volumes and atomic writes for the BIDS-App: :mod:`model.fileio`'s reader and writer
with errors that carry the app's exit codes (65/66 bad or missing input, 73 cannot write) and
name the file and the fix."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import nibabel as nb
import numpy as np

from ..model import fileio
from .errors import BadInputError, MissingInputError, OutputError


def load_volume(path, dtype=np.float32):
    """Load a 3D NIfTI -> (image, data array) with :func:`model.fileio.read_volume`; errors name
    the file and the fix.

    A 4D image with a single volume is accepted (squeezed); a missing file raises
    :class:`MissingInputError`; any other non-3D image, a corrupt or truncated file, or
    NaN/infinite values raise :class:`BadInputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        img, data = fileio.read_volume(path, dtype)
    except fileio.VolumeShapeError as error:
        raise BadInputError(str(error)) from None
    except Exception as error:  # nibabel raises many types for damaged files
        raise BadInputError(f"{path}: cannot read this NIfTI file ({error}); it may be corrupt "
                            "or truncated: re-export or re-download it") from None
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


@contextmanager
def _output_errors(path):
    try:
        yield
    except OSError as error:
        raise OutputError(f"{path}: cannot write here ({error.strerror or error}); choose a "
                          "writable output location or fix its permissions") from None


def write_atomic(path, write) -> Path:
    """:func:`model.fileio.write_atomic`; an ``OSError`` becomes :class:`OutputError` (73)."""
    with _output_errors(path):
        return fileio.write_atomic(path, write)


def write_text_atomic(path, text: str) -> Path:
    """:func:`model.fileio.write_text_atomic`; an ``OSError`` becomes :class:`OutputError` (73)."""
    with _output_errors(path):
        return fileio.write_text_atomic(path, text)
