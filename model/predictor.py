"""The one place inference happens: device, precision, memory plan and the APSP loop.

>>> predictor = Predictor(load_checkpoint("model.safetensors"), device="auto", precision="auto")
>>> out = predictor.predict(target, context_images, context_labels)   # [D,H,W] tensors

``context_labels`` may hold K label sets over the same context images (``[K, L, D, H, W]``):
the target is encoded once and the K*L (structure, context) pairs run through the context
U-Net in chunks of ``m`` pairs (:func:`.apsp.sum_context_features`, each pair's features
added to its structure's float32 sums), then the K structures are decoded one by one. The
result equals K separate calls.

The network runs through the fast engine (:class:`.engine.Engine`): weights are cast once to
the chosen precision and kept in ``channels_last_3d`` like every activation. Memory is flat in
L: the float32 sums are allocated before the first chunk and nothing of a chunk outlives it;
on the CPU, activations are mapped and returned to the system one by one
(:func:`.engine.memory.fresh_heap`), so that RSS follows the live tensors.
``mini_context_size='auto'`` picks the largest m (on the CPU at most ``CPU_AUTO_MAX``) whose
peak (traced at a tiny grid and scaled, see :meth:`Predictor.peak_bytes`) fits the budget.
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from typing import Dict, Optional, Union

import torch
from torch import Tensor

from .apsp import chunk_bounds, mean_, sum_context_features
from .contexts import ContextPairs
from .engine import Engine, memory
from .engine import precision as precision_policy
from .capability import bfloat16_support
from .engine.precision import (AGREEMENT_TARGETS, AUTO_TOLERANCE, native_bfloat16,  # noqa: F401
                               precision_of,
                               recorded_shortfall, resolve_device, resolve_precision)
from .network import Neuroverse3D, check_spatial_size
from .options import Precision

CL = torch.channels_last_3d
LOGGER = logging.getLogger("neuroverse3d")

#: ``auto`` mini-context size on the CPU: at most this many pairs at a time (larger chunks
#: cost more memory and are no faster there: the convolutions already use every core)
CPU_AUTO_MAX = 1


def float32_and(model: Neuroverse3D, precision, device: str = "cpu",
                mini_context_size: int = 1) -> Dict[Precision, "Predictor"]:
    """Predictors for float32 and ``precision``, each on its own float32 copy of ``model``
    (how a reduced precision's agreement with float32 is measured)."""
    return {p: Predictor(copy.deepcopy(model).float(), device=device, precision=p,
                         mini_context_size=mini_context_size)
            for p in (Precision.FLOAT32, Precision(precision))}


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Predictor:
    """Run a :class:`Neuroverse3D` on volumes, fast and within memory.

    device: ``auto|cpu|cuda[:N]``; precision: ``auto|float32|bfloat16|float16`` (``auto``:
    bfloat16 where the hardware runs it natively and the model's bfloat16 output agrees with
    float32, see :mod:`.engine.precision`; else float32; an explicit ``bfloat16`` where it
    cannot run raises :class:`~.engine.precision.PrecisionUnavailableError`);
    ``precision_reason`` says in one sentence why the chosen precision runs (provenance);
    mini_context_size: (structure, context) pairs per chunk, ``None`` = all at once,
    ``'auto'`` = the largest that fits ``memory_gb`` (default: a safe fraction of free RAM
    or GPU memory; on the CPU at most ``CPU_AUTO_MAX``). ``model`` is cast in place to the
    device and precision. After :meth:`predict`: ``last_mini_context_size``, ``timings``
    (s), ``last_required_bytes`` (estimated process peak) and ``budget_bytes``.
    """

    def __init__(self, model: Neuroverse3D, device: str = "auto", precision: str = "float32",
                 mini_context_size: Optional[Union[int, str]] = None,
                 memory_gb: Optional[float] = None):
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.metadata = getattr(model, "metadata", {})
        #: ``auto`` with a reduced precision: its measured error vs float32 (None otherwise)
        self.reduced_precision_error = None
        #: why this precision runs: requested, or what ``auto`` found (one sentence)
        self.precision_reason = self._reason(precision)
        if precision == "auto" and self.dtype != torch.float32:
            self._auto_fallback(model)
        if mini_context_size not in (None, "auto") and int(mini_context_size) < 1:
            raise ValueError(f"mini_context_size must be >= 1 or 'auto', got {mini_context_size}")
        self.mini_context_size = mini_context_size
        self.memory_gb = memory_gb
        self.model = model.eval().to(self.device, self.dtype, memory_format=CL)  # cast once
        self.engine = Engine(self.model)
        self._peaks = {}
        self.last_mini_context_size = None
        self.last_required_bytes = None
        self.budget_bytes = None
        self.timings = {}

    @property
    def precision(self) -> Precision:
        return precision_of(self.dtype)

    def _reason(self, precision: str) -> str:
        """Before ``auto``'s agreement check: what was asked and what the device offers."""
        if precision != "auto":
            if self.dtype != torch.bfloat16:
                return "requested"
            return f"requested; {bfloat16_support(self.device).describe()}"
        support = bfloat16_support(self.device).describe()
        return f"auto: {support}" if self.dtype == torch.bfloat16 else f"auto: float32, as {support}"

    def _auto_fallback(self, model: Neuroverse3D):
        """``auto``: keep the native reduced precision only where the checkpoint's recorded
        agreement (if any) meets :data:`AGREEMENT_TARGETS` and the measured relative L2 error
        is within :data:`AUTO_TOLERANCE`; else float32, with the reason logged."""
        shortfall = recorded_shortfall(self.metadata, self.precision)
        if shortfall:
            reason = (f"the model's recorded {self.precision} agreement with float32 misses its "
                      f"targets: {', '.join(shortfall)}")
        else:
            self.reduced_precision_error = precision_policy.reduced_precision_error(
                model, self.dtype, self.device, lambda size: float32_and(
                    model, self.precision, str(self.device), mini_context_size=size))
            if self.reduced_precision_error <= AUTO_TOLERANCE:
                self.precision_reason += (f"; agrees with float32 on this model (relative L2 "
                                          f"{self.reduced_precision_error:.2g})")
                return
            reason = (f"{self.precision} differs from float32 by "
                      f"{self.reduced_precision_error:.2g} (relative L2) on this model")
        LOGGER.info("precision auto: float32, as %s", reason)
        self.precision_reason = f"auto: float32, as {reason}"
        self.dtype = torch.float32

    # ------------------------------------------------------------------ the inference loop
    def _run(self, target: Tensor, contexts: ContextPairs, chunk: int,
             timings: Optional[dict] = None) -> Tensor:
        """target ``[D,H,W]`` and K label sets over L context images (any device, any float
        dtype) -> ``[K,D,H,W]`` in the model's dtype on its device."""
        engine, device, dtype = self.engine, self.device, self.dtype
        structures, pairs = contexts.structures, contexts.pairs
        clock = time.perf_counter()
        bottleneck, skips = engine.encode_target(
            target[None, None].to(device, dtype).contiguous(memory_format=CL))
        terms = engine.target_terms(skips)  # once per target, not per chunk
        # per structure: per-level float32 sums [1, C_k, ...] (h_0 like the bottleneck ..
        # h_{S-1} like skip 0), allocated before the first chunk so that every chunk, the
        # first included, runs with the same memory (flat in L)
        sums = [[torch.zeros_like(t, dtype=torch.float32, memory_format=CL)
                 for t in [bottleneck, *skips[::-1]]] for _ in range(structures)]
        _sync(device)
        encoded = time.perf_counter()

        def chunk_features(start: int, stop: int):
            """Items ``start..stop-1`` of the K*L (structure, context) pairs."""
            index = torch.arange(start, stop)
            ks, ls = (index // pairs).tolist(), (index % pairs).tolist()
            # [n, D, H, W, 2] -> [1, n, 2, D, H, W], channels last (no layout change later)
            pair = torch.stack([v.to(device, dtype) for v in contexts.take(ks, ls)], dim=-1)
            return engine.context_features(pair.permute(0, 4, 1, 2, 3)[None], terms)

        slots = [item // pairs for item in range(structures * pairs)]
        sum_context_features(chunk_features, chunk_bounds(structures * pairs, chunk), sums,
                             slots)
        del terms, chunk_features
        _sync(device)
        contexts_done = time.perf_counter()
        outputs = []
        for k in range(structures):
            means = [mean_(total, pairs, dtype) for total in sums[k]]
            sums[k] = None
            outputs.append(engine.decode(bottleneck, skips, means)[0, 0])
            del means
        out = torch.stack(outputs)
        _sync(device)
        if timings is not None:
            timings.update(encode_s=encoded - clock, contexts_s=contexts_done - encoded,
                           decode_s=time.perf_counter() - contexts_done)
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
                    peak = memory.traced_peak_bytes(lambda: self._run(small, contexts, chunk))
            finally:
                torch.set_num_threads(threads)
            self._peaks[key] = int(peak * key[0] / side ** 3)
        return self._peaks[key]

    def plan(self, shape, pairs: int, structures: int = 1,
             mini_context_size: Optional[Union[int, str]] = None) -> int:
        """Choose (auto) or check (explicit) the chunk size before any work starts.

        Raises :class:`~.engine.memory.MemoryBudgetError` when it cannot fit the budget.
        """
        total = structures * pairs
        requested = self.mini_context_size if mini_context_size is None else mini_context_size
        self.peak_bytes(shape, pairs, structures, 1)  # first trace: kernels load, RSS grows
        in_use = memory.in_use_bytes(self.device)
        self.budget_bytes = memory.budget_bytes(self.device, self.memory_gb)
        margin = memory.safety(self.device)
        room = int((self.budget_bytes - in_use - memory.SLACK_BYTES) / margin)
        where = f"{'GPU' if self.device.type == 'cuda' else 'RAM'} budget"
        if requested == "auto":
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
        start = time.perf_counter()
        chunk = self.plan(tuple(target.shape), contexts.pairs, contexts.structures,
                          mini_context_size)
        self.last_mini_context_size = chunk
        timings = {"plan_s": time.perf_counter() - start}
        with memory.fresh_heap() if self.device.type == "cpu" else nullcontext():
            out = self._run(target, contexts, chunk, timings)
        out = out.float().cpu()
        timings["total_s"] = time.perf_counter() - start
        self.timings = timings
        return out[0] if contexts.single else out
