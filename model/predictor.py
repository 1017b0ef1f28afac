"""The one place inference happens: device, precision, memory layout and APSP chunking.

>>> predictor = Predictor(load_checkpoint("model.safetensors"), device="auto", precision="auto")
>>> out = predictor.predict(target, context_images, context_labels)   # [D,H,W] tensors

``context_labels`` may hold K label sets over the same context images (``[K, L, D, H, W]``):
the target is encoded once and the K*L (structure, context) pairs run through the context
U-Net in chunks of ``m`` pairs; each structure's features are summed in float32, then the K
structures are decoded one by one. The result equals K separate calls.

Speed: weights are cast once to the chosen precision and kept in ``channels_last_3d`` like
every activation; on the CPU the network uses fused oneDNN conv kernels (see
``network.fusable``). The target's share of the context fusion is computed once per target
(``ContextUNet.target_terms``), not once per chunk, and the float32 feature sums are
accumulated slab by slab so that widening bfloat16 features stays in cache.
Flat memory: the float32 sums are allocated before the first chunk and nothing of a chunk
outlives it, so every chunk runs with the same live tensors whatever L; on the CPU, activations
are mapped and returned to the system one by one (:func:`.memory.cpu_heap`), so that RSS
follows them instead of the history of glibc's heap.
Memory: ``mini_context_size='auto'`` picks the largest m (on the CPU at most ``CPU_AUTO_MAX``)
whose peak (traced at a tiny grid and scaled, see :meth:`Predictor.peak_bytes`) fits the budget.
"""
from __future__ import annotations

import logging
import time
from typing import List, Optional, Union

import torch
from torch import Tensor

from . import memory
from .contexts import ContextPairs
from .network import Neuroverse3D, check_spatial_size

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CL = torch.channels_last_3d
LOGGER = logging.getLogger("neuroverse3d")


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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` picks bfloat16 where the hardware runs it natively, else float32 (the
    :class:`Predictor` then keeps it only for a model that passes :func:`reduced_precision_error`).
    """
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "float16" and device.type != "cuda":
        raise ValueError("float16 is supported on CUDA only; use bfloat16 or float32 on the CPU")
    return PRECISIONS[precision]


def native_bfloat16(device: torch.device) -> bool:
    """True where bfloat16 convolutions run in hardware (CPU: AMX/AVX512-BF16; CUDA: sm80+)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


#: ``auto`` mini-context size on the CPU: at most this many pairs at a time
CPU_AUTO_MAX = 1
#: ``auto`` precision keeps a reduced precision only below this relative L2 error vs float32
AUTO_TOLERANCE = 1e-2
#: ... and only where the agreement recorded in the checkpoint on real tasks meets these
#: (metadata ``precision_agreement``, e.g. written by ``benchmarks/precision_agreement.py
#: --record``): worst Dice of reduced-precision masks vs float32 masks, worst PSNR (dB) of
#: generated images vs float32
AGREEMENT_TARGETS = {"dice_min": 0.99, "psnr_min_db": 45.0}


#: measured :func:`reduced_precision_error` per (checkpoint sha256, dtype, device type, L)
_AGREEMENT: dict = {}


def reduced_precision_error(model: Neuroverse3D, dtype: torch.dtype, device: torch.device,
                            contexts: int = 2) -> float:
    """Relative L2 error of ``model`` in ``dtype`` vs float32 on a fixed synthetic problem.

    Smooth random volumes on a small grid (32^3 or the model's divisor x 2), ``contexts``
    pairs with thresholded labels; deterministic. Costs about two small forward passes (4 s for
    the released configuration on 2 CPU cores). The error is a property of the weights: e.g.
    1.9e-3 for the released configuration, 1.4e-2 for the 4..64-channel reference fixture.
    A model loaded from a checkpoint (``metadata['sha256']``) is measured once per process.
    """
    import copy

    sha256 = getattr(model, "metadata", {}).get("sha256")
    key = (sha256, dtype, device.type, contexts)
    if sha256 and key in _AGREEMENT:
        return _AGREEMENT[key]

    side = max(32, 2 * model.divisor)
    generator = torch.Generator().manual_seed(0)

    def smooth():  # [side]^3 in [0, 1], structure at ~1/6 of the grid
        coarse = torch.rand((1, 1, 6, 6, 6), generator=generator)
        return torch.nn.functional.interpolate(coarse, size=(side,) * 3, mode="trilinear",
                                               align_corners=True)[0, 0]

    target = smooth()
    images = torch.stack([smooth() for _ in range(contexts)])
    labels = (torch.stack([smooth() for _ in range(contexts)]) > 0.5).float()
    outputs = [Predictor(copy.deepcopy(model).float(), device=str(device), precision=precision,
                         mini_context_size=contexts).predict(target, images, labels)
               for precision in ("float32", str(dtype).replace("torch.", ""))]
    reference, low = outputs
    error = ((low - reference).norm() / reference.norm().clamp_min(1e-12)).item()
    if sha256:
        _AGREEMENT[key] = error
    return error


SLAB_BYTES = 2 ** 20  # elementwise work in slabs this big stays in the CPU caches


def recorded_shortfall(metadata: dict, precision: str) -> List[str]:
    """The agreement figures recorded for ``precision`` in checkpoint ``metadata`` that miss
    :data:`AGREEMENT_TARGETS`, e.g. ``['dice_min 0.8 < 0.99']``; empty without a record."""
    record = (metadata.get("precision_agreement") or {}).get(precision) or {}
    return [f"{key} {record[key]:g} < {target:g}" for key, target in AGREEMENT_TARGETS.items()
            if key in record and record[key] < target]


def _slabs(*tensors: Tensor):
    """Views of ``[1, C, D, H, W]`` tensors cut along D into matching slabs of about
    ``SLAB_BYTES`` (contiguous in ``channels_last_3d``); one whole slab on CUDA."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dim() != 5:
        yield tensors
        return
    plane = max(1, first[:, :, :1].numel() * 4)
    step = max(1, SLAB_BYTES // plane)
    for start in range(0, first.shape[2], step):
        yield tuple(t[:, :, start:start + step] for t in tensors)


def accumulate_(total: Tensor, part: Tensor) -> Tensor:
    """``total += part`` with a float32 ``total`` and a lower-precision ``part``, slab by slab,
    each slab widened into one reused buffer that stays in cache (4x faster than a mixed-dtype
    ``add_``, which casts element by element, and than a fresh widened copy per slab)."""
    if part.dtype == total.dtype:
        return total.add_(part)
    widened = None
    for acc, new in _slabs(total, part):
        if widened is None or widened.shape != new.shape:
            widened = torch.empty_like(new, dtype=total.dtype)
        acc.add_(widened.copy_(new))
    return total


def mean_(total: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """``total / count`` in ``dtype``; ``total`` (float32, no longer needed) is divided in place."""
    if dtype == total.dtype:
        return total.div_(count)
    out = torch.empty_like(total, dtype=dtype)
    for acc, dst in _slabs(total, out):
        dst.copy_(acc.div_(count))
    return out


def _add_to_sums(sums: list, features: list, structures: list) -> None:
    """Add pair j of each context feature level (``[1, n, C_k, ...]``) to the float32 sums of
    its structure ``structures[j]``. A function, so that no loop variable keeps a feature of
    this chunk alive into the next (a full-resolution feature: 134 MB at 128^3 in bfloat16)."""
    for j, k in enumerate(structures):
        for total, level in zip(sums[k], features):
            accumulate_(total, level[:, j])


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Predictor:
    """Run a :class:`Neuroverse3D` on volumes, fast and within memory.

    device: ``auto|cpu|cuda[:N]``; precision: ``auto|float32|bfloat16|float16`` (``auto``:
    bfloat16 where the hardware runs it natively and the model's bfloat16 output agrees with
    float32: within ``AUTO_TOLERANCE`` on a synthetic check, and within ``AGREEMENT_TARGETS``
    where the checkpoint records its agreement; else float32, ``precision_reason`` says why);
    mini_context_size: (structure, context) pairs per chunk, ``None`` = all at once,
    ``'auto'`` = the largest that fits ``memory_gb`` (default: a safe fraction of free RAM
    or GPU memory; on the CPU at most ``CPU_AUTO_MAX``); cpu_heap: how glibc serves
    activations on the CPU (:func:`.memory.cpu_heap`; ``fresh``: RSS follows the live
    tensors, the same for any L). After :meth:`predict`:
    ``last_mini_context_size``, ``timings`` (s), ``last_required_bytes`` (estimated process
    peak) and ``budget_bytes``.
    """

    def __init__(self, model: Neuroverse3D, device: str = "auto", precision: str = "float32",
                 mini_context_size: Optional[Union[int, str]] = None,
                 memory_gb: Optional[float] = None, cpu_heap: str = "fresh"):
        self.cpu_heap = memory.check_heap_policy(cpu_heap)  # before any work
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.metadata = getattr(model, "metadata", {})
        #: ``auto`` with a reduced precision: its measured error vs float32 (None otherwise)
        self.reduced_precision_error = None
        #: why ``auto`` fell back to float32 from a native reduced precision (None otherwise)
        self.precision_reason = None
        if precision == "auto" and self.dtype != torch.float32:
            self._auto_fallback(model)
        if mini_context_size not in (None, "auto") and int(mini_context_size) < 1:
            raise ValueError(f"mini_context_size must be >= 1 or 'auto', got {mini_context_size}")
        self.mini_context_size = mini_context_size
        self.memory_gb = memory_gb
        self.model = model.eval().to(self.device, self.dtype, memory_format=CL)  # cast once
        self._peaks = {}
        self.last_mini_context_size = None
        self.last_required_bytes = None
        self.budget_bytes = None
        self.timings = {}

    @property
    def precision(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def _auto_fallback(self, model: Neuroverse3D):
        """``auto``: keep the native reduced precision only where the checkpoint's recorded
        agreement (if any) meets :data:`AGREEMENT_TARGETS` and the measured relative L2 error
        is within :data:`AUTO_TOLERANCE`; else float32, with the reason logged."""
        shortfall = recorded_shortfall(self.metadata, self.precision)
        if shortfall:
            reason = (f"the model's recorded {self.precision} agreement with float32 misses its "
                      f"targets: {', '.join(shortfall)}")
        else:
            self.reduced_precision_error = reduced_precision_error(model, self.dtype, self.device)
            if self.reduced_precision_error <= AUTO_TOLERANCE:
                return
            reason = (f"{self.precision} differs from float32 by "
                      f"{self.reduced_precision_error:.2g} (relative L2) on this model")
        LOGGER.info("precision auto: float32, as %s", reason)
        self.precision_reason = reason
        self.dtype = torch.float32

    # ------------------------------------------------------------------ the inference loop
    def _run(self, model, target: Tensor, contexts: ContextPairs, chunk: int,
             timings: Optional[dict] = None) -> Tensor:
        """target ``[D,H,W]`` and K label sets over L context images (any device, any float
        dtype) -> ``[K,D,H,W]`` in the model's dtype on its device."""
        device, dtype = model.target_encoder.target_embedding.weight.device, self.dtype
        structures, pairs = contexts.structures, contexts.pairs
        clock = time.perf_counter()
        bottleneck, skips = model.encode_target(
            target[None, None].to(device, dtype).contiguous(memory_format=CL))
        terms = model.context_unet.target_terms(skips)  # once per target, not per chunk
        # per structure: per-level float32 sums [1, C_k, ...], allocated before the first chunk
        # so that every chunk, the first included, runs with the same memory (flat in L)
        # (levels as the context features: h_0 like the bottleneck .. h_{S-1} like skip 0)
        sums = [[torch.zeros_like(t, dtype=torch.float32, memory_format=CL)
                 for t in [bottleneck, *skips[::-1]]] for _ in range(structures)]
        _sync(device)
        encoded = time.perf_counter()
        for start in range(0, structures * pairs, chunk):
            index = torch.arange(start, min(start + chunk, structures * pairs))
            ks, ls = (index // pairs).tolist(), (index % pairs).tolist()
            # [n, D, H, W, 2] -> [1, n, 2, D, H, W] with channels last (no layout change later)
            pair = torch.stack([v.to(device, dtype) for v in contexts.take(ks, ls)], dim=-1)
            features = model.context_unet(pair.permute(0, 4, 1, 2, 3)[None], skips, terms)
            del pair
            _add_to_sums(sums, features, ks)
            del features  # no reference may outlive the chunk: the next one needs its memory
        del terms
        _sync(device)
        contexts = time.perf_counter()
        outputs = []
        for k in range(structures):
            means = [mean_(s, pairs, dtype) for s in sums[k]]
            sums[k] = None
            outputs.append(model.decode(bottleneck, skips, means)[0, 0])
            del means
        out = torch.stack(outputs)
        _sync(device)
        if timings is not None:
            timings.update(encode_s=encoded - clock, contexts_s=contexts - encoded,
                           decode_s=time.perf_counter() - contexts)
        return out

    # ------------------------------------------------------------------------- memory
    def peak_bytes(self, shape, pairs: int, structures: int, chunk: int) -> int:
        """Peak bytes of tensors :meth:`predict` allocates for this problem.

        Every activation is ``C_i * (D*H*W) / 8**i`` elements, so the peak scales exactly with
        the voxel count: the real inference loop is replayed on the model's device at the
        smallest grid (``divisor**3`` voxels, milliseconds) while :class:`.memory.LiveBytes`
        counts live storages, and the count is scaled up. Results are cached.
        """
        key = (int(torch.Size(shape).numel()), pairs, structures, chunk)
        if key not in self._peaks:
            side = self.model.divisor
            small = torch.zeros((side,) * 3)
            if structures == 1:  # from the 2nd chunk on, every chunk's state is the same
                pairs = min(pairs, 2 * chunk)
            contexts = ContextPairs(torch.zeros((pairs, side, side, side)), torch.zeros(
                (structures, pairs, side, side, side)), small.shape)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny ops: threads only add synchronisation
            try:
                with torch.inference_mode():
                    if not self._peaks:  # derived weights are cached on first use: not traced
                        self._run(self.model, small, contexts, chunk)
                    peak = memory.traced_peak_bytes(
                        lambda: self._run(self.model, small, contexts, chunk))
            finally:
                torch.set_num_threads(threads)
            self._peaks[key] = int(peak * key[0] / side ** 3)
        return self._peaks[key]

    def plan(self, shape, pairs: int, structures: int = 1,
             mini_context_size: Optional[Union[int, str]] = None) -> int:
        """Choose (auto) or check (explicit) the chunk size before any work starts.

        Raises :class:`~.memory.MemoryBudgetError` when it cannot fit the budget.
        """
        total = structures * pairs
        requested = self.mini_context_size if mini_context_size is None else mini_context_size
        self.peak_bytes(shape, pairs, structures, 1)  # first trace: kernels load, RSS grows
        in_use = memory.in_use_bytes(self.device)
        self.budget_bytes = memory.budget_bytes(self.device, self.memory_gb)
        margin = memory.safety(self.device, self.cpu_heap)
        room = int((self.budget_bytes - in_use - memory.SLACK_BYTES) / margin)
        where = f"{'GPU' if self.device.type == 'cuda' else 'RAM'} budget"
        if requested == "auto":
            # on the CPU larger chunks buy nothing (128^3, bfloat16, L=16: m=1 35-40 s and
            # 3.0-3.1 GB, m=2 47 s, m=4 43 s and 4.4 GB): one pair at a time
            cap = total if self.device.type == "cuda" else min(total, CPU_AUTO_MAX)
            chunk = memory.largest_fitting(
                lambda m: self.peak_bytes(shape, pairs, structures, m), cap, room)
            if not chunk:
                need = memory.required_bytes(self.peak_bytes(shape, pairs, structures, 1),
                                             in_use, margin)
                raise memory.MemoryBudgetError(
                    f"even one context pair at a time needs about {memory.describe(need)}, more "
                    f"than the {where} of {memory.describe(self.budget_bytes)}; raise --mem, "
                    f"use a smaller grid or --precision bfloat16")
        else:
            chunk = total if requested is None else min(int(requested), total)
            peak = self.peak_bytes(shape, pairs, structures, chunk)
            if peak > room:
                need = memory.required_bytes(peak, in_use, margin)
                raise memory.MemoryBudgetError(
                    f"mini-context size {chunk} needs about {memory.describe(need)}, more than the "
                    f"{where} of {memory.describe(self.budget_bytes)}; use a smaller "
                    f"--mini-context-size (or auto) or raise --mem")
        self.last_required_bytes = memory.required_bytes(
            self.peak_bytes(shape, pairs, structures, chunk), in_use, margin)
        return chunk

    # --------------------------------------------------------------------------- public
    @torch.inference_mode()
    def predict(self, target: Tensor, context_images: Tensor, context_labels: Tensor,
                mini_context_size: Optional[Union[int, str]] = None) -> Tensor:
        """target ``[D,H,W]``, context_images ``[L,D,H,W]``, context_labels ``[L,D,H,W]`` or
        ``[K,L,D,H,W]`` (K structures) -> float32 CPU tensor ``[D,H,W]`` or ``[K,D,H,W]``.

        The context volumes may also be sequences (of L volumes; labels: or of K such
        sequences), read only when their chunk runs (:class:`.contexts.ContextPairs`): memory
        then stays flat in L, inputs included."""
        target = torch.as_tensor(target)
        if target.dim() != 3:
            raise ValueError(f"target must be [D,H,W]; got {list(target.shape)}")
        check_spatial_size(target.shape, self.model.divisor)
        contexts = ContextPairs(context_images, context_labels, target.shape)
        structures, pairs = contexts.structures, contexts.pairs
        start = time.perf_counter()
        chunk = self.plan(tuple(target.shape), pairs, structures, mini_context_size)
        self.last_mini_context_size = chunk
        timings = {"plan_s": time.perf_counter() - start}
        with memory.cpu_heap(self.cpu_heap if self.device.type == "cpu" else "default"):
            out = self._run(self.model, target, contexts, chunk, timings)
        out = out.float().cpu()
        timings["total_s"] = time.perf_counter() - start
        self.timings = timings
        return out[0] if contexts.single else out
