"""Data-parallel training with PyTorch ``DistributedDataParallel`` under ``torchrun``.

The APSP training step calls the network's parts (``encode_target``, ``context_features``,
``decode``), not ``Neuroverse3D.forward``; :class:`APSPTrainingModule` makes that step the
``forward`` of a small module, so DDP's hooks see one forward per group and its reducer
all-reduces (averages) the gradients in buckets during the last backward of a step.
Each rank handles the groups ``rank, rank + world, ...`` of the global batch, so N processes
compute the same update as one process with the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..apsp import apsp_training_forward


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_train_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_train_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, resolved)


def all_reduce_sum_(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); reduced on ``context.device``, as NCCL
    takes CUDA tensors only."""
    if context.enabled:
        work = tensor.to(context.device)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        if work is not tensor:
            tensor.copy_(work)
    return tensor


class APSPTrainingModule(nn.Module):
    """One APSP training forward as ``forward`` (what DDP wraps); ``net`` is the Neuroverse3D.

    Every parameter gets a gradient through the chunk that keeps its graph, so DDP needs no
    ``find_unused_parameters``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, target_in: Tensor, context_in: Tensor, context_out: Tensor,
                mini_context_size: int, generator: torch.Generator) -> Tensor:
        """``[B,1,D,H,W]``, ``[B,L,1,D,H,W]`` x2 -> ``[B,1,D,H,W]``; the chunk that keeps its
        graph is drawn from ``generator`` (see ``apsp_training_forward``)."""
        return apsp_training_forward(self.net, target_in, context_in, context_out,
                                     mini_context_size, generator=generator)


def wrap_for_training(net: nn.Module, context: DistContext) -> nn.Module:
    """:class:`APSPTrainingModule` around ``net``, inside ``DistributedDataParallel`` when
    several processes run (which also broadcasts rank 0's weights to every rank).

    DDP averages gradients over ranks: scale each rank's loss by ``world_size`` to get sums.
    """
    module = APSPTrainingModule(net)
    if not context.enabled:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def is_ddp(engine: nn.Module) -> bool:
    return isinstance(engine, DistributedDataParallel)


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def cleanup(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
