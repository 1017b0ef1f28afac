"""Data-parallel helpers for ``torchrun`` (single or multi node).

The APSP training step calls the network's parts (``encode_target``, ``context_features``,
``decode``) rather than ``forward``, which ``DistributedDataParallel`` needs to hook into; so
gradients are averaged explicitly with one flat all-reduce per step, which is what DDP does.
Each rank handles the groups ``rank, rank + world, ...`` of the global batch, so N processes
compute the same update as one process with the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    """In-place sum over ranks (no-op on one process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(model: torch.nn.Module, context: DistContext) -> None:
    """Sum every parameter's gradient over ranks (one flat buffer).

    The loss is already divided by the global batch size, so the sum is the global mean.
    """
    if not context.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def broadcast_parameters(model: torch.nn.Module, context: DistContext) -> None:
    """Make every rank start from rank 0's weights."""
    if context.enabled:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def cleanup(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
