"""torchrun support: the same training loop on one or many processes (as arcface_torch does).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process and every helper
here is a no-op."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# the gloo group for host values under NCCL (see host_group)
_HOST_GROUP = None


def setup(device: str) -> tuple[Topology, torch.device]:
    """Initialise the process group when launched by torchrun; NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Topology(), torch.device(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    host_group()  # made here, where every rank passes at the same point (making a group is a collective)
    return Topology(rank, world_size, local_rank), dev


def teardown() -> None:
    global _HOST_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def host_group():
    """The process group for numbers the host holds (per-batch counts, labels): gloo, which exchanges CPU
    tensors, so that sharing them never waits for the GPU's queue to drain (NCCL takes device tensors
    only, and reading a result back from the device would wait for every step queued before it). None
    means the default group, when that is gloo already. The first call under NCCL makes the group, a
    collective: `setup` makes it, at a point every rank passes alike."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo")
    return _HOST_GROUP


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of ranks): (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    """Every rank's (n, ...) rows stacked in rank order, (world x n, ...), with PyTorch's current collectives
    (`all_gather_single`; torch.distributed.nn.functional.all_gather is deprecated). Backward: each rank
    receives the sum over ranks of the gradients on its own rows (`reduce_scatter_single`), as it would if
    every rank's loss had been computed in one process."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        return _all_gather_rows(rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        own = grad.new_empty((len(grad) // dist.get_world_size(), *grad.shape[1:]))
        dist.reduce_scatter_single(own, grad.contiguous())
        return own


def gather_equal_rows(rows: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """All ranks' rows, each rank sending the same number, stacked in rank order (one collective). With
    `differentiable`, the gradient flows back to every rank's own rows (summed over the ranks' losses)."""
    return _GatherRows.apply(rows) if differentiable else _all_gather_rows(rows.detach())


def _all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.contiguous()
    gathered = rows.new_empty((dist.get_world_size() * len(rows), *rows.shape[1:]))
    dist.all_gather_single(gathered, rows)
    return gathered


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Sum each of a few host numbers over the ranks, in one all-reduce on the host group (the values
    themselves when not distributed). For the loop's per-batch counts: one exchange a step, not one per
    count, and none that waits for the GPU."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, group=host_group())
    return t.tolist()
