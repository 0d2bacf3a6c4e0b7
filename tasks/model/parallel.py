"""The process-group side of data-parallel training (DDP) inside one ``torchrun`` worker: which process this is,
its device, the backend, the model wrapper and the few collectives training needs (README "Scaling").

:func:`steelqc.tasks.model.train.train_model` takes a :class:`DistContext` (None: one process, as always);
:mod:`steelqc.tasks.model.distributed` launches the processes and makes the context in each.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
"""How long a process waits in a collective (the other ranks wait this long while rank 0 validates an epoch)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group: ``rank`` of ``world_size``, ``local_rank`` on its machine, the
    ``backend`` and the ``device`` it trains on (``cuda:<local_rank>`` on GPUs)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates, writes checkpoints and the epoch history."""
        return self.rank == 0

    def describe(self) -> dict[str, object]:
        """What the rank's record says about it (``ddp/rank-<r>.jsonl``)."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "backend": self.backend,
            "device": self.device,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }


def choose_backend(requested: str, device: str) -> str:
    """``nccl`` for CUDA devices and ``gloo`` for the CPU under ``auto``; an explicit choice is kept (nccl on the
    CPU is refused: it has no CPU tensors)."""
    if requested not in BACKENDS:
        raise ValueError(f"ddp_backend must be one of {BACKENDS}, got {requested!r}")
    cuda = str(device).startswith("cuda")
    if requested == "nccl" and not cuda:
        raise ValueError("ddp_backend nccl needs CUDA devices; use gloo (or auto) to train on the CPU")
    if requested == "auto":
        return "nccl" if cuda else "gloo"
    return requested


def rank_device(prefer: str, local_rank: int) -> str:
    """``cuda:<local_rank>`` when CUDA is available and wanted (not ``prefer="cpu"``), else ``cpu``; refuses more
    local processes than visible GPUs."""
    if (prefer or "auto").lower() == "cpu" or not torch.cuda.is_available():
        return "cpu"
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): set train processes to at "
            "most the number of GPUs"
        )
    return f"cuda:{local_rank}"


def init_from_env(prefer_device: str, backend: str) -> DistContext:
    """Join the process group ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/
    ``MASTER_PORT`` in the environment) and pin this process to its device."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = rank_device(prefer_device, local_rank)
    chosen = choose_backend(backend, device)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group(chosen, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank, world, local_rank, dist.get_backend(), device)


def shutdown() -> None:
    """Leave the process group (when in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext | None) -> nn.Module:
    """``model`` itself for one process; else DDP over it (gradients all-reduced in buckets during the backward
    pass; rank 0's BatchNorm statistics broadcast before each forward). The raw ``model`` stays what is validated
    and saved: its parameters are the wrapper's."""
    if ctx is None:
        return model
    device_ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sum_over_ranks(values: list[float], ctx: DistContext | None) -> list[float]:
    """Element-wise sums of ``values`` over every rank (``values`` itself for one process)."""
    if ctx is None:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_flag(flag: bool, ctx: DistContext | None) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. early stopping: all ranks must stop after the same epoch)."""
    if ctx is None:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=ctx.device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier(ctx: DistContext | None) -> None:
    """Wait for every rank (no-op for one process)."""
    if ctx is not None:
        dist.barrier(device_ids=[ctx.local_rank] if ctx.device.startswith("cuda") else None)
