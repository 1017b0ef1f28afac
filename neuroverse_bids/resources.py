"""What each ICL node reserves from the scheduler and the inference options it runs with."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from .config import InferenceConfig, NipypeConfig
from .model.options import InferenceOptions, Precision
from .workflows.errors import UsageError
from .workflows.plan import IclResources

GB = 1024 ** 3


def icl_resources(model, grid: Dict, structures: int, pairs: int, inference: InferenceConfig,
                  nipype: NipypeConfig, stacked: Optional[int] = None
                  ) -> Tuple[IclResources, InferenceOptions]:
    """``mem_gb`` from the predictor's memory plan for the model grid, ``n_procs`` from
    ``omp_nthreads`` (else ``nprocs``), and the node's inference options.

    ``inference.mem_gb`` is the scheduler's total; the plan must fit in it (else exit 64
    before any work). The node reserves its planned peak from that total (so the scheduler
    never runs more ICL nodes than fit), runs the planned mini-context size, and checks it
    against its own budget (``icl_mem_gb``, else ``mem_gb``, else a safe fraction of free
    memory). On a GPU the plan is the GPU's, made when the node runs; the node reserves the
    host memory of its arrays. ``stacked``: the pairs the node loads when it chooses ``pairs``
    out of a pool (default ``pairs``).
    """
    from .model.predictor import Predictor, resolve_device

    n_procs = nipype.omp_nthreads or nipype.nprocs or os.cpu_count() or 1
    shape = list(grid["shape"])
    arrays_gb = 4 * (1 + structures) * ((stacked or pairs) + 1) * int(np.prod(shape)) / GB
    try:
        device = resolve_device(inference.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if device.type != "cpu":
        return (IclResources(round(arrays_gb + 1.0, 2), n_procs),
                InferenceOptions(inference.device, inference.precision,
                                 inference.mini_context_size, inference.icl_mem_gb))
    precision = (inference.precision if inference.precision in (Precision.FLOAT32,
                                                                Precision.BFLOAT16)
                 else Precision.FLOAT32)
    budget = inference.icl_mem_gb or inference.mem_gb
    predictor = Predictor(model, device="cpu", precision=precision,
                          mini_context_size=inference.mini_context_size, memory_gb=budget)
    try:
        chunk = predictor.plan(shape, pairs=pairs, structures=structures)
    except ValueError as error:  # MemoryBudgetError: even one pair does not fit
        raise UsageError(f"the ICL node cannot run within its memory budget: {error}") from None
    mem_gb = round(predictor.last_required_bytes / GB + arrays_gb, 2)
    if inference.mem_gb and mem_gb > inference.mem_gb:
        raise UsageError(f"one ICL node needs about {mem_gb} GB for the {shape} grid with "
                         f"{pairs} context pairs, more than --mem {inference.mem_gb} GB; raise "
                         "--mem or lower --mini-context-size")
    return (IclResources(mem_gb, n_procs),
            InferenceOptions(inference.device, inference.precision, chunk, budget))
