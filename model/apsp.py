"""Adaptive Parallel-Sequential Processing (APSP) of the context set: the one chunk loop.

The context pairs are split into mini-contexts (chunks) of ``m`` pairs. Pairs inside a chunk
run in parallel (one batched pass of the context U-Net); chunks run one after another and
only the per-level *sums* of the context features are kept (in float32, or wider). The target
decoder then sees the exact mean over all pairs, so memory is flat in L and the output does
not depend on ``m`` or on the chunk order.

:func:`sum_context_features` is that loop, for every caller: the reference forward
(:func:`mean_context_features`), the training step (:func:`apsp_training_forward`) and the
inference engine (``Predictor``), which differ only in how a chunk's features are computed
and in which sum (structure) each pair goes to.

Training: every chunk but one runs under ``no_grad``; the one chosen uniformly at random keeps
its graph and its gradient is scaled by the number of chunks K, so that the expected gradient
equals the full-context gradient for any L and m.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

#: elementwise work in slabs this big stays in the CPU caches
SLAB_BYTES = 2 ** 20

Features = List[Tensor]  # one tensor per level, [B, n, C_k, ...]


def chunk_bounds(num_pairs: int, mini_context_size: Optional[int]) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(num_pairs)`` in chunks of ``mini_context_size``."""
    size = num_pairs if mini_context_size is None else int(mini_context_size)
    if not 1 <= size <= num_pairs:
        raise ValueError(f"mini_context_size must be in 1..{num_pairs} (the context size), got {size}")
    return [(start, min(start + size, num_pairs)) for start in range(0, num_pairs, size)]


def sum_context_features(chunk_features: Callable[[int, int], Features],
                         bounds: Sequence[Tuple[int, int]], sums: List[List[Optional[Tensor]]],
                         slots: Optional[Sequence[int]] = None,
                         live_chunk: Optional[int] = None) -> List[List[Tensor]]:
    """The APSP loop: add the features of every chunk of pairs to ``sums``.

    chunk_features(start, stop): per-level features ``[B, n, C_k, ...]`` of pairs
    ``start..stop-1``. sums: per slot (a structure), per level ``[B, C_k, ...]``; ``None``
    entries are created at the first chunk (the engine allocates them before, so that every
    chunk runs with the same memory). slots: the slot of each pair (default: all in slot 0).
    live_chunk: the index in ``bounds`` of the one chunk that keeps its graph, its gradient
    scaled by ``len(bounds)`` (training); the others run under ``no_grad``. ``None``: every
    chunk runs as the caller's grad mode says. Nothing of a chunk outlives it.
    """
    grad = torch.is_grad_enabled()
    for index, (start, stop) in enumerate(bounds):
        live = live_chunk is None or index == live_chunk
        with torch.set_grad_enabled(grad and live):
            features = chunk_features(start, stop)
            if live_chunk is not None and live:
                # value: the features; gradient: len(bounds) times theirs
                features = [f.detach() + len(bounds) * (f - f.detach()) for f in features]
            pair_slots = [0] * (stop - start) if slots is None else slots[start:stop]
            accumulate(sums, features, pair_slots)
            del features  # the next chunk needs its memory
    return sums


def accumulate(sums: List[List[Optional[Tensor]]], features: Features,
               slots: Sequence[int]) -> None:
    """The one accumulator: pair j of each level of ``features`` (``[B, n, C_k, ...]``) is added
    to ``sums[slots[j]]``, in float32 or the features' dtype if wider. A function, so that no
    loop variable keeps a chunk's feature alive into the next chunk."""
    for j, slot in enumerate(slots):
        totals = sums[slot]
        for level, feature in enumerate(features):
            part = feature[:, j]
            if totals[level] is None:
                dtype = torch.promote_types(part.dtype, torch.float32)
                totals[level] = torch.zeros_like(part, dtype=dtype)
            add_(totals[level], part)


def add_(total: Tensor, part: Tensor) -> Tensor:
    """``total += part``. A narrower ``part`` (bfloat16 inference on the CPU) is widened slab
    by slab into one reused buffer that stays in cache: a mixed-dtype ``add_`` casts element
    by element, and a whole widened copy would be one more full-size tensor."""
    if part.dtype == total.dtype or part.requires_grad or total.device.type != "cpu":
        return total.add_(part)
    widened = None
    for acc, new in slabs(total, part):
        if widened is None or widened.shape != new.shape:
            widened = torch.empty_like(new, dtype=total.dtype)
        acc.add_(widened.copy_(new))
    return total


def mean_(total: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """``total / count`` in ``dtype``; ``total`` (no longer needed) is divided in place, and
    narrowed slab by slab."""
    if dtype == total.dtype:
        return total.div_(count)
    if total.requires_grad or total.device.type != "cpu":
        return total.div_(count).to(dtype)
    out = torch.empty_like(total, dtype=dtype)
    for acc, dst in slabs(total, out):
        dst.copy_(acc.div_(count))
    return out


def slabs(*tensors: Tensor):
    """Views of ``[B, C, D, H, W]`` tensors cut along D into matching slabs of about
    ``SLAB_BYTES`` of float32 (contiguous in ``channels_last_3d``)."""
    first = tensors[0]
    if first.dim() != 5:
        yield tensors
        return
    plane = max(1, first[:, :, :1].numel() * 4)
    step = max(1, SLAB_BYTES // plane)
    for start in range(0, first.shape[2], step):
        yield tuple(t[:, :, start:start + step] for t in tensors)


# ------------------------------------------------------------------ the reference network's
def _chunk_reader(model, context_in: Tensor, context_out: Tensor, target_skips: List[Tensor]):
    """Features of pairs ``start..stop-1``; the chunk is moved to the skips' device and dtype."""
    ref = target_skips[0]

    def chunk_features(start: int, stop: int) -> Features:
        chunk_in = context_in[:, start:stop].to(ref.device, ref.dtype, non_blocking=True)
        chunk_out = context_out[:, start:stop].to(ref.device, ref.dtype, non_blocking=True)
        return model.context_features(chunk_in, chunk_out, target_skips)
    return chunk_features


def mean_context_features(model, context_in: Tensor, context_out: Tensor,
                          target_skips: List[Tensor], mini_context_size: Optional[int] = None,
                          order: Optional[Sequence[int]] = None) -> List[Tensor]:
    """Exact mean context features over all pairs, computed chunk by chunk.

    context_in / context_out: ``[B, L, 1, D, H, W]`` on any device; target_skips from
    ``model.encode_target``. ``order`` permutes the chunks (for testing order invariance).
    Returns per-level means ``[B, C_k, ...]`` in the target skips' dtype.
    """
    num_pairs = context_in.shape[1]
    bounds = chunk_bounds(num_pairs, mini_context_size)
    if order is not None:
        bounds = [bounds[i] for i in order]
    sums = sum_context_features(_chunk_reader(model, context_in, context_out, target_skips),
                                bounds, [[None] * (len(target_skips) + 1)])
    return [mean_(total, num_pairs, target_skips[0].dtype) for total in sums[0]]


def apsp_training_forward(model, target_in: Tensor, context_in: Tensor, context_out: Tensor,
                          mini_context_size: int, chosen_chunk: Optional[int] = None,
                          generator: Optional[torch.Generator] = None) -> Tensor:
    """Forward for one training step with APSP; gradients are unbiased (see module doc).

    ``chosen_chunk`` fixes which chunk keeps its graph (default: drawn uniformly with
    ``generator``). The returned value equals the full-context forward.
    """
    num_pairs = context_in.shape[1]
    bounds = chunk_bounds(num_pairs, mini_context_size)
    if chosen_chunk is None:
        chosen_chunk = int(torch.randint(len(bounds), (1,), generator=generator))
    if not 0 <= chosen_chunk < len(bounds):
        raise ValueError(f"chosen_chunk must be in 0..{len(bounds) - 1}, got {chosen_chunk}")
    bottleneck, skips = model.encode_target(target_in)
    sums = sum_context_features(_chunk_reader(model, context_in, context_out, skips), bounds,
                                [[None] * (len(skips) + 1)], live_chunk=chosen_chunk)
    means = [mean_(total, num_pairs, skips[0].dtype) for total in sums[0]]
    return model.decode(bottleneck, skips, means)
