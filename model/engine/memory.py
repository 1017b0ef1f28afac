"""Memory budget for inference: how much there is, and how much a mini-context size needs.

The peak is not guessed from a formula that could drift from the code: the predictor's own
inference loop is replayed at a tiny grid while a dispatch mode (:class:`LiveBytes`) counts
the bytes of live tensor storages, and the count is scaled by the voxel count (see
``Predictor.peak_bytes``). That gives the peak of tensor memory of the code as written, for
the model config, grid, precision, number of contexts and structures, and chunk size m.
Kernels' hidden scratch space and allocator slack (not seen by the dispatch mode) are
covered by :func:`safety` and ``SLACK_BYTES``, calibrated on measured peak RSS.

Budgets and estimates are in bytes of the whole process (CPU: resident set size including
the interpreter, weights and inputs; CUDA: memory allocated by torch on the device).
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import weakref
from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..exit_codes import ExitCode

GB = 1024 ** 3
#: process peak / traced tensor peak on the CPU inside :func:`fresh_heap` (hidden kernel
#: scratch such as oneDNN buffers; 1.24-1.39 measured at 128^3 on the released configuration)
CPU_SAFETY = 1.6
#: the same on CUDA (cuDNN workspaces, the caching allocator's blocks; not calibrated)
CUDA_SAFETY = 3.0
SLACK_BYTES = 256 * 1024 ** 2  # allocator fragmentation, oneDNN scratch, Python objects
DEFAULT_FRACTION = 0.8  # of the memory available when no budget is given


class MemoryBudgetError(ValueError):
    """The requested mini-context size (or any) cannot run within the memory budget."""

    exit_code = ExitCode.USAGE  # usage: choose a smaller --mini-context-size or a larger --mem


class LiveBytes(TorchDispatchMode):
    """Count the bytes of tensor storages created under this mode and still alive.

    ``peak`` is the high-water mark. Views and in-place results share their input's storage
    and are not counted again; storages that existed before the mode are never counted.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs = {}

    def _release(self, key: int, nbytes: int):
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if key in inputs:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            self._refs[key] += 1
            weakref.finalize(tensor, self._release, key, nbytes)
        return out


def traced_peak_bytes(function: Callable[[], object]) -> int:
    """Peak bytes of the tensors that ``function()`` allocates and holds at once."""
    with LiveBytes() as counter:
        result = function()
        del result
    return counter.peak


def process_rss_bytes() -> int:
    """Resident set size of this process now (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS (``VmHWM``; unlike ``ru_maxrss`` it is not
    inherited from the parent across fork and exec), 0 where unknown."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room() -> Optional[int]:
    """Bytes left under a cgroup v2/v1 memory limit, or None without one."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as limit, open(usage_path) as usage:
                text = limit.read().strip()
                if text == "max" or int(text) >= 1 << 60:
                    return None
                return int(text) - int(usage.read().strip())
        except (OSError, ValueError):
            continue
    return None


def available_cpu_bytes() -> int:
    """RAM this process could still take: ``MemAvailable``, capped by a cgroup limit."""
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    room = _cgroup_room()
    return available if room is None else min(available, room)


def in_use_bytes(device: torch.device) -> int:
    """What the process already holds where the budget applies (RSS, or CUDA allocated)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return process_rss_bytes()


def default_budget_bytes(device: torch.device, fraction: float = DEFAULT_FRACTION) -> int:
    """What is held now plus ``fraction`` of the free RAM (CPU) or free GPU memory (CUDA)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_cpu_bytes()
    return in_use_bytes(device) + int(fraction * free)


def budget_bytes(device: torch.device, memory_gb: Optional[float] = None) -> int:
    """The budget: ``memory_gb`` when given, else :func:`default_budget_bytes`."""
    if memory_gb is None:
        return default_budget_bytes(device)
    if memory_gb <= 0:
        raise ValueError(f"memory budget must be positive, got {memory_gb} GB")
    return int(memory_gb * GB)


def safety(device: torch.device) -> float:
    """The margin on the traced peak for ``device``."""
    return CPU_SAFETY if device.type == "cpu" else CUDA_SAFETY


def required_bytes(traced_peak: int, in_use: int, margin: float) -> int:
    """Process peak to expect: memory held now plus the traced peak times ``margin``
    (:func:`safety`) plus ``SLACK_BYTES``."""
    return in_use + int(margin * traced_peak) + SLACK_BYTES


def largest_fitting(peak_for: Callable[[int], int], upper: int, room: int) -> int:
    """Largest m in ``1..upper`` with ``peak_for(m) <= room`` (peaks grow with m), or 0.

    Uses the affine growth of the peak in m (every chunk tensor scales with m) for a first
    guess, then checks it and steps down; ``peak_for`` is called a few times only.
    """
    first = peak_for(1)
    if first > room:
        return 0
    if upper == 1:
        return 1
    per_pair = max(peak_for(2) - first, 1)
    guess = min(upper, 1 + (room - first) // per_pair)
    while guess > 1 and peak_for(guess) > room:
        guess -= 1
    return int(guess)


def describe(nbytes: int) -> str:
    return f"{nbytes / GB:.2f} GB"


# ---------------------------------------------------------------------- CPU heap (glibc)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
#: after a block: the most glibc's own (dynamic) mmap threshold reaches, and its trim pair
_AFTER_FRESH = {_M_MMAP_THRESHOLD: 32 * 1024 ** 2, _M_TRIM_THRESHOLD: 64 * 1024 ** 2}
FRESH_THRESHOLD = 2 * 1024 ** 2  # blocks of 2 MB and more: mapped when allocated (huge pages)
_DEPTH = [0]


@functools.lru_cache(maxsize=None)
def _glibc():
    """glibc's ``mallopt``/``malloc_trim`` (None elsewhere: macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def fresh_heap():
    """Inside this block, glibc maps every block of 2 MB or more when it is allocated and
    returns it when freed, so that the process's RSS follows the live tensors.

    Activations of a 3D network at 128^3 are 2-270 MB each. glibc's default maps blocks above
    a *dynamic* threshold (128 kB, raised up to 32 MB as blocks are freed) and keeps smaller
    ones in its heap, where they fragment: peak RSS would depend on the history of the process
    and grow with the number of chunks, and the memory plan could not bound it. (glibc still
    serves a block from free room already in its heap, so the heap is trimmed first.) On
    leaving, the threshold is 32 MB (the most glibc's own reaches; glibc cannot be handed its
    dynamic threshold back). Nested blocks are one block. A no-op without glibc.
    """
    libc = _glibc()
    if libc is None or _DEPTH[0]:
        yield
        return
    trim_heap()
    libc.mallopt(_M_MMAP_THRESHOLD, FRESH_THRESHOLD)
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1
        for parameter, value in _AFTER_FRESH.items():
            libc.mallopt(parameter, value)
        trim_heap()


def trim_heap() -> None:
    """Give the heap's free memory back to the system (glibc ``malloc_trim``; else a no-op)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
