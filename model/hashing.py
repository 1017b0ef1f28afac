"""Content digests (sha256), in one place: files, text and arrays.

Used for provenance (a model's or a source's ``sha256``), cache keys (a context set's request)
and seeds derived from names; none of them imports torch.
"""
from __future__ import annotations

import hashlib

import numpy as np


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str, length: int = 64) -> str:
    """The first ``length`` hex digits of the sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def array_sha256(*arrays) -> str:
    """Hex sha256 of the bytes of ``arrays`` (C order), one after the other."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
