"""Can this machine run bfloat16 convolutions, and how well: the one capability probe.

Three answers, for a CPU (x86 or ARM) or a CUDA device:

* ``native``: bfloat16 arithmetic in hardware (x86: ``avx512_bf16`` or ``amx_bf16``; ARM:
  ``bf16``; CUDA: compute capability 8.0 and newer), so bfloat16 is faster than float32;
* ``emulated``: torch runs bfloat16 convolutions, but by converting to float32 (e.g. x86 with
  AVX-512 BW/VL/DQ but no bf16 dot product): it works, slower than float32;
* ``unsupported``: a bfloat16 convolution raises (x86 with AVX2 only: oneDNN needs
  ``avx512bw``, ``avx512vl`` and ``avx512dq``, or ``avx_ne_convert``).

The answer comes from the CPU's named features, torch's own oneDNN gate and a tiny bfloat16
convolution actually run (torch decides what runs, the feature names explain it), cached per process and
device. ``NEUROVERSE3D_BF16=off`` makes every CPU report ``unsupported``, so any machine can
take the path of a CPU without AVX-512.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import FrozenSet, Tuple

import torch

#: environment switch: ``off`` makes the probe answer ``unsupported`` on the CPU
SWITCH_ENV = "NEUROVERSE3D_BF16"
NATIVE, EMULATED, UNSUPPORTED = "native", "emulated", "unsupported"

#: x86 features that do bfloat16 arithmetic in hardware
X86_NATIVE = ("amx_bf16", "avx512_bf16")
#: x86 features torch's oneDNN needs for a bfloat16 convolution at all (either set)
X86_RUNNABLE = (("avx512bw", "avx512vl", "avx512dq"), ("avx_ne_convert",))
#: the features worth naming in a report (those above, and the vector width)
X86_NAMED = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_bf16",
             "amx_tile", "avx_ne_convert")
ARM_NAMED = ("asimd", "sve", "sve2", "bf16", "i8mm")


@dataclass(frozen=True)
class Bfloat16Support:
    """What :func:`bfloat16_support` found for one device."""

    level: str               # native | emulated | unsupported
    device: str              # cpu | cuda
    features: Tuple[str, ...]  # the relevant features this device has, by name
    reason: str              # one sentence: why this level (names what is missing)

    @property
    def runs(self) -> bool:
        """bfloat16 convolutions work here (natively or emulated)."""
        return self.level != UNSUPPORTED

    @property
    def faster(self) -> bool:
        """bfloat16 is expected to beat float32 here (hardware arithmetic)."""
        return self.level == NATIVE

    def describe(self) -> str:
        """e.g. ``bfloat16 native on this cpu (avx512_bf16, avx512bw, ...)``."""
        named = ", ".join(self.features) or "no relevant features"
        return f"bfloat16 {self.level} on this {self.device} ({named}): {self.reason}"


def switched_off() -> bool:
    """True when ``NEUROVERSE3D_BF16=off`` (also ``0``, ``no``, ``false``)."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() in ("off", "0", "no", "false")


def cpu_features() -> FrozenSet[str]:
    """This CPU's feature names, lower case, as Linux spells them (``avx512_bf16``,
    ``amx_bf16``, ARM ``bf16``); macOS's sysctl names are mapped onto them. Empty where
    they cannot be read."""
    return _cpu_features()


@lru_cache(maxsize=1)
def _cpu_features() -> FrozenSet[str]:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    key, _, value = line.partition(":")
                    if key.strip().lower() in ("flags", "features"):  # x86 | ARM
                        return frozenset(value.lower().split())
        except OSError:
            pass
        return frozenset()
    if sys.platform == "darwin":
        return _darwin_features()
    return frozenset()


def _darwin_features() -> FrozenSet[str]:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if platform.machine() == "arm64":  # Apple silicon: hw.optional.arm.FEAT_* = 0|1
        found = {"asimd"}
        if sysctl("hw.optional.arm.FEAT_BF16") == "1":
            found.add("bf16")
        return frozenset(found)
    words = f"{sysctl('machdep.cpu.features')} {sysctl('machdep.cpu.leaf7_features')}".lower()
    renamed = {"avx2.0": "avx2", "avx512bf16": "avx512_bf16"}  # macOS spellings
    return frozenset(renamed.get(word, word) for word in words.split())


def _is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64") or platform.machine().lower().startswith("arm")


def _bfloat16_convolution_runs(device: torch.device) -> Tuple[bool, str]:
    """torch's oneDNN gate for bfloat16 (the engine's fused kernels call oneDNN directly),
    then a tiny bfloat16 3D convolution run: (True, "") or (False, why)."""
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False, "oneDNN reports no bfloat16 support on this CPU"
    try:
        x = torch.ones((1, 2, 2, 2, 2), dtype=torch.bfloat16, device=device)
        weight = torch.ones((2, 2, 1, 1, 1), dtype=torch.bfloat16, device=device)
        torch.nn.functional.conv3d(x.contiguous(memory_format=torch.channels_last_3d), weight)
        return True, ""
    except RuntimeError as error:
        return False, str(error).strip().splitlines()[0]


def bfloat16_support(device="cpu") -> Bfloat16Support:
    """The bfloat16 capability of ``device`` (``torch.device`` or its name); cached per
    process and device."""
    device = torch.device(device)
    return _probe(device.type, device.index if device.type == "cuda" else None, switched_off())


@lru_cache(maxsize=None)
def _probe(kind: str, index, off: bool) -> Bfloat16Support:
    if kind == "cuda":
        return _probe_cuda(torch.device("cuda", index or 0))
    return _probe_cpu(off)


def _probe_cpu(off: bool) -> Bfloat16Support:
    flags = cpu_features()
    arm = _is_arm()
    named = tuple(f for f in (ARM_NAMED if arm else X86_NAMED) if f in flags)
    if off:
        return Bfloat16Support(UNSUPPORTED, "cpu", named, f"{SWITCH_ENV}=off is set")
    runs, message = _bfloat16_convolution_runs(torch.device("cpu"))
    if not runs:
        if arm:
            missing = "the ARM bf16 extension"
        else:
            missing = " + ".join(f for f in X86_RUNNABLE[0] if f not in flags) or "avx512bw"
            missing += " (or avx_ne_convert)"
        return Bfloat16Support(UNSUPPORTED, "cpu", named,
                               f"bfloat16 convolution needs {missing}, which this CPU lacks "
                               f"(torch: {message})")
    native = ("bf16",) if arm else X86_NATIVE
    present = [f for f in native if f in flags]
    if present:
        return Bfloat16Support(NATIVE, "cpu", named, f"hardware bfloat16 ({', '.join(present)})")
    return Bfloat16Support(EMULATED, "cpu", named,
                           f"no hardware bfloat16 ({' or '.join(native)} missing): it runs "
                           "through float32 conversions, slower than float32")


def _probe_cuda(device: torch.device) -> Bfloat16Support:
    major, minor = torch.cuda.get_device_capability(device)
    named = (f"sm_{major}{minor}",)
    if major >= 8:
        return Bfloat16Support(NATIVE, "cuda", named, "compute capability 8.0+ (bfloat16 tensor cores)")
    runs, message = _bfloat16_convolution_runs(device)
    if runs:
        return Bfloat16Support(EMULATED, "cuda", named,
                               f"compute capability {major}.{minor} < 8.0: no bfloat16 tensor cores")
    return Bfloat16Support(UNSUPPORTED, "cuda", named,
                           f"compute capability {major}.{minor} cannot run bfloat16 convolution "
                           f"(torch: {message})")
