"""Distributed helpers: set-up from the torchrun environment, rank helpers, gathers for the contrastive losses."""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend is not None


def world_info_from_env() -> tuple[int, int, int]:
    """Return (rank, local_rank, world_size) as torchrun sets them (0, 0, 1 when absent)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world_size


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> DistEnv:
    """Initialise torch.distributed from the torchrun environment: NCCL on GPUs, gloo on CPU.

    Without torchrun's variables (``WORLD_SIZE`` unset) the process runs alone and no process group is made.
    ``device`` is ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
    """
    rank, local_rank, world_size = world_info_from_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if "WORLD_SIZE" not in os.environ:
        return DistEnv(0, 0, 1, dev, None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": dev} if use_cuda else {}))
    return DistEnv(rank, local_rank, world_size, dev, backend)


def cleanup_distributed() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


def barrier() -> None:
    """Synchronise all processes (no-op alone)."""
    if is_dist():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``src``'s ``tensor`` on every rank (same shape and dtype everywhere); the tensor itself without a group."""
    if is_dist():
        tensor = tensor.contiguous()
        dist.broadcast(tensor, src=src)
    return tensor


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (a copy; the input is untouched)."""
    if not is_dist():
        return value.clone()
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0, without gradients (for evaluation features)."""
    if not is_dist():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_object(obj) -> list:
    """Gather one picklable object per rank into a list, in rank order."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of either the summed gradient of every rank
    (``full``: the full-batch gradient) or of this rank's own loss alone (``local``: the reference CCLM behaviour)."""

    @staticmethod
    def forward(ctx, tensor, full: bool):
        ctx.full = full
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        if ctx.full:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank, n = dist.get_rank(), grad.shape[0] // dist.get_world_size()
        return grad[rank * n:(rank + 1) * n], None


def all_gather_with_grad(tensor: torch.Tensor, mode: str = "full") -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    ``mode='full'`` gives each rank the gradient of the whole-batch loss for its slice (what DDP then averages);
    ``mode='local'`` reproduces the reference: only the rank's own loss terms reach its slice.
    Every rank must pass the same shape.
    """
    if mode not in ("full", "local"):
        raise ValueError(f"all_gather_with_grad: mode must be 'full' or 'local', got {mode!r}")
    if not is_dist() or get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, mode == "full")
