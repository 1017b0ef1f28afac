"""NIfTI volumes and atomic writes for the BIDS-App: :mod:`model.fileio`'s reader and writer
with errors that carry the app's exit codes (65/66 bad or missing input, 73 cannot write, a
full disk included) and name the file and the fix.

nibabel and :mod:`model.fileio` (whose package imports torch) are imported when first used:
the command line's ``--help`` imports this module through ``logs.py`` and must stay fast.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from .errors import (DISK_FULL_ERRNOS, BadInputError, MissingInputError, OutputError,
                     disk_full_error)


def node_file(runtime, name: str) -> str:
    """``name`` in the working folder of the Nipype node that ``runtime`` belongs to."""
    return str(Path(runtime.cwd) / name)


def load_volume(path, dtype=None):
    """Load a 3D NIfTI -> (image, data array, float32 by default) with
    :func:`model.fileio.read_volume`; errors name the file and the fix.

    A 4D image with a single volume is accepted (squeezed); a missing file raises
    :class:`MissingInputError`; any other non-3D image, a corrupt or truncated file, or
    NaN/infinite values raise :class:`BadInputError`.
    """
    import numpy as np

    from ..model import fileio

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        img, data = fileio.read_volume(path, np.float32 if dtype is None else dtype)
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
    import nibabel as nb
    import numpy as np

    path = Path(path)
    array = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    header = reference.header.copy()
    header.set_data_dtype(array.dtype)
    img = nb.Nifti1Image(array, reference.affine, header)
    img.header.set_xyzt_units(*reference.header.get_xyzt_units())
    return write_atomic(path, lambda tmp: nb.save(img, tmp), size_hint=array.nbytes)


@contextmanager
def _output_errors(path, size_hint: Optional[int] = None):
    try:
        yield
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:  # measured after the temporary file is gone
            raise disk_full_error(path, size_hint, error.strerror or str(error)) from None
        raise OutputError(f"{path}: cannot write here ({error.strerror or error}); choose a "
                          "writable output location or fix its permissions") from None


def write_atomic(path, write, size_hint: Optional[int] = None) -> Path:
    """:func:`model.fileio.write_atomic`; an ``OSError`` becomes :class:`OutputError` (73), a
    full disk :class:`DiskFullError` (73) that says what is free and, with ``size_hint`` (bytes
    the file needs, about), what was needed. No partial file is left either way."""
    from ..model import fileio

    with _output_errors(path, size_hint):
        return fileio.write_atomic(path, write)


def write_text_atomic(path, text: str) -> Path:
    """:func:`model.fileio.write_text_atomic`; an ``OSError`` becomes :class:`OutputError` (73)."""
    from ..model import fileio

    with _output_errors(path, len(text.encode("utf-8"))):
        return fileio.write_text_atomic(path, text)
