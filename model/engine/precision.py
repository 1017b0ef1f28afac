"""Device and precision policy: which device, which dtype, and when ``auto`` may keep bfloat16.

``auto`` picks a reduced precision (bfloat16) where the hardware runs it natively (the probe of
:mod:`..capability`: faster than float32 there), and keeps
it only for a model whose output agrees with float32: within :data:`AUTO_TOLERANCE` (relative
L2) on a fixed synthetic problem (:func:`reduced_precision_error`), and within
:data:`AGREEMENT_TARGETS` where the checkpoint records its agreement on real tasks.

The synthetic check costs two small forward passes (seconds for the released architecture),
a property of the weights: it is cached per checkpoint SHA256, dtype, device type and torch
version in the user's cache folder (:func:`cache_dir`), so that a process started for one
prediction does not pay it again. An explicit bfloat16 where the device cannot run it is a
usage error (:class:`PrecisionUnavailableError`, exit code 64); training asks the same probe
(:func:`training_bfloat16`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from ..capability import bfloat16_support
from ..exit_codes import ExitCode
from ..fileio import write_text_atomic
from ..options import Precision

#: each explicit :class:`~..options.Precision` and its dtype
DTYPES = {Precision.FLOAT32: torch.float32, Precision.BFLOAT16: torch.bfloat16,
          Precision.FLOAT16: torch.float16}
#: ``auto`` precision keeps a reduced precision only below this relative L2 error vs float32
AUTO_TOLERANCE = 1e-2
#: ... and only where the agreement recorded in the checkpoint on real tasks meets these
#: (metadata ``precision_agreement``, e.g. written by ``benchmarks/precision_agreement.py
#: --record``): worst Dice of reduced-precision masks vs float32 masks, worst PSNR (dB) of
#: generated images vs float32
AGREEMENT_TARGETS = {"dice_min": 0.99, "psnr_min_db": 45.0}
#: environment variable naming the cache folder (default: ``$XDG_CACHE_HOME/neuroverse3d``)
CACHE_ENV = "NEUROVERSE3D_CACHE_DIR"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> first CUDA device when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    return resolved


class PrecisionUnavailableError(ValueError):
    """A precision this device cannot run was asked for explicitly (a usage error: ask for
    ``auto`` or ``float32``)."""

    exit_code = ExitCode.USAGE


def precision_of(dtype: torch.dtype) -> Precision:
    """The :class:`~..options.Precision` of a dtype (``torch.bfloat16`` -> ``BFLOAT16``)."""
    return next(p for p, d in DTYPES.items() if d == dtype)


def resolve_precision(precision, device: torch.device) -> torch.dtype:
    """``auto`` picks bfloat16 where the hardware runs it natively (faster than float32), else
    float32 (the ``Predictor`` then keeps it only for a model that agrees, see the module doc).
    An explicit ``bfloat16`` on a device that cannot run it raises
    :class:`PrecisionUnavailableError`, naming what is missing."""
    try:
        precision = Precision(precision)
    except ValueError:
        raise ValueError(f"precision must be one of {', '.join(Precision.names())}; got "
                         f"{precision!r}") from None
    if precision == Precision.AUTO:
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if precision == Precision.FLOAT16 and device.type != "cuda":
        raise ValueError("float16 is supported on CUDA only; use bfloat16 or float32 on the CPU")
    if precision == Precision.BFLOAT16:
        require_bfloat16(device)
    return DTYPES[precision]


def require_bfloat16(device: torch.device) -> None:
    """Raise :class:`PrecisionUnavailableError` where ``device`` cannot run bfloat16."""
    support = bfloat16_support(device)
    if not support.runs:
        raise PrecisionUnavailableError(
            f"bfloat16 cannot run on this {support.device}: {support.reason}; use --precision "
            "auto or float32")


def training_bfloat16(request, device: torch.device) -> Tuple[bool, str]:
    """Training: autocast to bfloat16 or not, and why (for the run's provenance).

    ``request``: ``"auto"`` (bfloat16 only where it runs natively, faster than float32),
    ``True`` (required: :class:`PrecisionUnavailableError` where it cannot run) or ``False``.
    """
    if request is False:
        return False, "float32 requested (bf16: false)"
    support = bfloat16_support(device)
    if request is True:
        require_bfloat16(device)
        return True, f"bfloat16 requested (bf16: true); {support.describe()}"
    if support.faster:
        return True, f"auto: {support.describe()}"
    return False, f"auto: float32, as {support.describe()}"


def native_bfloat16(device: torch.device) -> bool:
    """True where bfloat16 runs in hardware, faster than float32 (:mod:`..capability`)."""
    return bfloat16_support(device).faster


def recorded_shortfall(metadata: dict, precision: str) -> List[str]:
    """The agreement figures recorded for ``precision`` in checkpoint ``metadata`` that miss
    :data:`AGREEMENT_TARGETS`, e.g. ``['dice_min 0.8 < 0.99']``; empty without a record."""
    record = (metadata.get("precision_agreement") or {}).get(precision) or {}
    return [f"{key} {record[key]:g} < {target:g}" for key, target in AGREEMENT_TARGETS.items()
            if key in record and record[key] < target]


# --------------------------------------------------------------------- the self-check
def cache_dir() -> Path:
    """``$NEUROVERSE3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuroverse3d``, else
    ``~/.cache/neuroverse3d``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuroverse3d"


def _cache_file(sha256: str, dtype: torch.dtype, device: torch.device, contexts: int) -> Path:
    name = str(dtype).replace("torch.", "")
    return cache_dir() / "precision-check" / f"{sha256}-{name}-{device.type}-L{contexts}.json"


def _read_cached(path: Path, key: dict) -> Optional[float]:
    """The cached error of ``path`` if it holds a record for exactly ``key``; a missing,
    unreadable or corrupt file is a miss (it is rewritten after measuring)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if all(record.get(k) == v for k, v in key.items()):
            return float(record["relative_l2"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def _write_cached(path: Path, key: dict, error: float) -> None:
    try:
        write_text_atomic(path, json.dumps(dict(key, relative_l2=error)))
    except OSError:  # a read-only home: measure again next time
        pass


def reduced_precision_error(model, dtype: torch.dtype, device: torch.device,
                            make_pair: Callable, contexts: int = 2) -> float:
    """Relative L2 error of ``model`` in ``dtype`` vs float32 on a fixed synthetic problem.

    Smooth random volumes on a small grid (32^3 or the model's divisor x 2), ``contexts``
    pairs with thresholded labels; deterministic. About two small forward passes. The error
    is a property of the weights (e.g. 1.9e-3 for the released configuration, 1.4e-2 for the
    4..64-channel reference fixture). For a model loaded from a file (``metadata['sha256']``)
    it is read from, or written to, the cache (:func:`cache_dir`). ``make_pair(mini_context_size)``
    returns the two predictors ``{Precision.FLOAT32: ..., <dtype's precision>: ...}``
    (:func:`..predictor.float32_and`).
    """
    sha256 = getattr(model, "metadata", {}).get("sha256")
    key = {"sha256": sha256, "dtype": str(dtype), "device": device.type, "contexts": contexts,
           "torch": torch.__version__}
    path = _cache_file(sha256, dtype, device, contexts) if sha256 else None
    cached = _read_cached(path, key) if path else None
    if cached is not None:
        return cached

    side = max(32, 2 * model.divisor)
    generator = torch.Generator().manual_seed(0)

    def smooth():  # [side]^3 in [0, 1], structure at ~1/6 of the grid
        coarse = torch.rand((1, 1, 6, 6, 6), generator=generator)
        return torch.nn.functional.interpolate(coarse, size=(side,) * 3, mode="trilinear",
                                               align_corners=True)[0, 0]

    target = smooth()
    images = torch.stack([smooth() for _ in range(contexts)])
    labels = (torch.stack([smooth() for _ in range(contexts)]) > 0.5).float()
    predictors = make_pair(contexts)
    reference, low = (predictors[p].predict(target, images, labels)
                      for p in (Precision.FLOAT32, precision_of(dtype)))
    error = ((low - reference).norm() / reference.norm().clamp_min(1e-12)).item()
    if path:
        _write_cached(path, key, error)
    return error
