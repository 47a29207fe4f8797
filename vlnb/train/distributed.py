"""Data parallelism without magic: one full model replica per process, gradients averaged once per step.

Launch with ``torchrun --nproc_per_node=K script.py`` (it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or create the process group yourself;
:func:`init_distributed` picks either up. The trainer then

1. broadcasts rank 0's parameters so that all replicas start identical,
2. gives each rank a disjoint slice of every global batch,
3. gathers the embeddings of all ranks *with* gradient (:func:`gather_with_grad`) so each rank computes
   the contrastive loss over the global batch (all samples are negatives of each other), and
4. averages the parameter gradients over ranks (:func:`average_gradients`) before clipping and the
   optimizer step.

This is what ``DistributedDataParallel`` does, minus bucketing/overlap of communication with the
backward pass; done by hand it composes cleanly with gradient caching (re-forwarding micro-batches)
and frozen towers. For large GPU jobs prefer open_clip, which implements the same loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` picks the GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by the environment (torchrun), reuse an existing one, or
    return the single-process :class:`DistInfo`. ``backend`` defaults to NCCL on CUDA, gloo on CPU."""
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1:
        return DistInfo()
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise RuntimeError(
            f"WORLD_SIZE={n} is set but RANK/MASTER_ADDR are not: launch with torchrun, or set RANK, "
            "MASTER_ADDR and MASTER_PORT for every process"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0 (rank order), keeping the autograd graph: the
    backward pass returns to each rank the sum over ranks of the gradient w.r.t. its slice."""
    if world_size(group) == 1:
        return x
    # lazy: torch builds without distributed support lack it; one rank never needs it
    import torch.distributed.nn.functional as dnf

    return torch.cat(dnf.all_gather(x, group=group) if group is not None else dnf.all_gather(x), dim=0)


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (identical replicas)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def average_gradients(params) -> None:
    """All-reduce (mean over ranks) the ``.grad`` of ``params``, one flat buffer per dtype.

    A parameter without a gradient contributes zeros (every rank runs the same code, so this only
    happens for parameters that no rank used)."""
    n = world_size()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for dtype in {p.grad.dtype for p in params}:
        grads = [p.grad for p in params if p.grad.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
