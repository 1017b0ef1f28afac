"""The one atomic file writer: outputs appear whole or not at all."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


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
