"""Adaptive Parallel-Sequential Processing (APSP) of the context set.

The L context pairs are split into mini-contexts (chunks) of ``m`` pairs. Pairs inside a chunk
run in parallel (one batched pass of the context U-Net); chunks run one after another and only
the per-level *sums* of the context features are kept, in float32. The target decoder then
sees the exact mean over all L pairs, so memory is flat in L and the output does not depend
on ``m`` or on the chunk order.

Training uses the same split: every chunk but one runs under ``no_grad``; the one chosen
uniformly at random keeps its graph and its gradient is scaled by the number of chunks K, so
that the expected gradient equals the full-context gradient for any L and m.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def chunk_bounds(num_pairs: int, mini_context_size: Optional[int]) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(num_pairs)`` in chunks of ``mini_context_size``."""
    size = num_pairs if mini_context_size is None else int(mini_context_size)
    if not 1 <= size <= num_pairs:
        raise ValueError(f"mini_context_size must be in 1..{num_pairs} (the context size), got {size}")
    return [(start, min(start + size, num_pairs)) for start in range(0, num_pairs, size)]


def _chunk_feature_sums(model, context_in: Tensor, context_out: Tensor, bounds: Tuple[int, int],
                        target_skips: List[Tensor]) -> List[Tensor]:
    """Context features of one chunk summed over its pairs: list of ``[B, C_k, ...]`` float32."""
    ref = target_skips[0]
    start, stop = bounds
    chunk_in = context_in[:, start:stop].to(ref.device, ref.dtype, non_blocking=True)
    chunk_out = context_out[:, start:stop].to(ref.device, ref.dtype, non_blocking=True)
    features = model.context_features(chunk_in, chunk_out, target_skips)
    return [f.sum(dim=1, dtype=torch.float32) for f in features]


def _accumulate(total: Optional[List[Tensor]], part: List[Tensor]) -> List[Tensor]:
    if total is None:
        return part
    for acc, new in zip(total, part):
        acc.add_(new)
    return total


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
    total = None
    for chunk in bounds:
        total = _accumulate(total, _chunk_feature_sums(model, context_in, context_out, chunk,
                                                        target_skips))
    dtype = target_skips[0].dtype
    return [(s / num_pairs).to(dtype) for s in total]


def apsp_training_forward(model, target_in: Tensor, context_in: Tensor, context_out: Tensor,
                          mini_context_size: int, chosen_chunk: Optional[int] = None,
                          generator: Optional[torch.Generator] = None) -> Tensor:
    """Forward for one training step with APSP; gradients are unbiased (see module doc).

    ``chosen_chunk`` fixes which chunk keeps its graph (default: drawn uniformly with
    ``generator``). The returned value equals the full-context forward.
    """
    bounds = chunk_bounds(context_in.shape[1], mini_context_size)
    num_chunks = len(bounds)
    if chosen_chunk is None:
        chosen_chunk = int(torch.randint(num_chunks, (1,), generator=generator))
    if not 0 <= chosen_chunk < num_chunks:
        raise ValueError(f"chosen_chunk must be in 0..{num_chunks - 1}, got {chosen_chunk}")

    bottleneck, skips = model.encode_target(target_in)
    total = None
    with torch.no_grad():
        for index, chunk in enumerate(bounds):
            if index != chosen_chunk:
                total = _accumulate(total, _chunk_feature_sums(model, context_in, context_out,
                                                                chunk, skips))
    live = _chunk_feature_sums(model, context_in, context_out, bounds[chosen_chunk], skips)
    # value: the chunk's sum; gradient: num_chunks times the chunk's gradient
    live = [part.detach() + num_chunks * (part - part.detach()) for part in live]
    total = live if total is None else [acc + part for acc, part in zip(total, live)]
    dtype = skips[0].dtype
    means = [(s / context_in.shape[1]).to(dtype) for s in total]
    return model.decode(bottleneck, skips, means)
