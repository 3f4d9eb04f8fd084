"""Running on many processes with torch.distributed, as `torchrun` launches them.

`torchrun --nproc-per-node N ...` starts N processes and gives each the environment variables RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. `init_from_env` reads them and joins the
process group (nccl on CUDA, gloo on CPU); without them (a plain `python`/`svd-core` call) it
returns the one-process world, so every caller runs the same code with or without torchrun.

Sharding is by position: rank r of W takes the items r, r + W, r + 2W, ... (`shard`), and a global
training batch of B samples is split in W equal consecutive slices (`batch_slice`), so which
sample a rank works on is a function of the global index, never of the world size alone.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")


class DistributedError(ValueError):
    """A torchrun environment or a world size that the job cannot work with."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among world_size processes, and its GPU on the node."""

    rank: int = 0  # 0 ... world_size - 1, over all machines
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # index of the process on its machine (its GPU index under torchrun)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, merged manifests and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1


def world() -> World:
    """The running process group's World, or the one-process World when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    )


def init_from_env(device: str = "cpu") -> World:
    """Join the process group that torchrun describes in the environment; a no-op without torchrun.

    `device` picks the backend: nccl for "cuda..." (and each rank then uses cuda:LOCAL_RANK), gloo
    otherwise. Calling it again in a process that already joined returns the same World.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} is not; "
            "launch with torchrun (which sets all of them) or unset WORLD_SIZE"
        )
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    atexit.register(shutdown)
    return world()


def shutdown() -> None:
    """Leave the process group (if any) so the processes exit cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str, current: World) -> str:
    """The device of this rank: "cuda" becomes cuda:LOCAL_RANK under torchrun, anything else stays."""
    if device == "cuda" and current.distributed:
        return f"cuda:{current.local_rank}"
    return device


def shard(items: Sequence[Item], current: World) -> list[tuple[int, Item]]:
    """This rank's (global index, item) pairs: items r, r + W, r + 2W, ... of the sequence."""
    return [(i, items[i]) for i in range(current.rank, len(items), current.world_size)]


def batch_slice(batch_size: int, current: World) -> tuple[int, int]:
    """(offset, count) of this rank's consecutive part of a global batch of batch_size samples."""
    if batch_size % current.world_size:
        raise DistributedError(
            f"the batch size {batch_size} (clips per step, over all processes) must be a multiple "
            f"of the number of processes {current.world_size}; use e.g. "
            f"--batch-size {max(1, batch_size // current.world_size) * current.world_size}"
        )
    count = batch_size // current.world_size
    return current.rank * count, count


def mean_over_ranks(value: float, current: World) -> float:
    """The mean of a float over all ranks (each rank gets the same result); `value` without a group."""
    if not current.distributed:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.item() / current.world_size


def barrier(current: World) -> None:
    """Wait for every rank (no-op in the one-process world)."""
    if current.distributed:
        dist.barrier()


class _CallLoss(torch.nn.Module):
    """Holds the trained module so DDP can wrap it; forward calls a loss function of that module.

    The training losses call submodules (model.unet, model.image_encoder) directly rather than one
    `forward`; DDP only needs its own forward to run around the computation to synchronize the
    gradients of the parameters it holds, so its forward is "call this loss function".
    """

    def __init__(self, trained: torch.nn.Module) -> None:
        super().__init__()
        self.trained = trained

    def forward(self, loss_function, *args) -> torch.Tensor:
        return loss_function(*args)


def data_parallel(trained: torch.nn.Module, current: World):
    """`forward(loss_function, *args)` that runs a training loss on this rank's share of the batch.

    One process: it calls `loss_function(*args)`. Under torchrun: through DistributedDataParallel
    around `trained`, so backward all-reduces the mean of the gradients over the ranks; with the
    loss a mean over each rank's equal share, that is the gradient of the mean over the global batch,
    as one process with the whole batch computes it. `trained` itself stays unwrapped (its
    state_dict is what checkpoints hold).
    """
    if not current.distributed:
        return lambda loss_function, *args: loss_function(*args)
    from torch.nn.parallel import DistributedDataParallel

    device = next(trained.parameters()).device
    wrapped = DistributedDataParallel(
        _CallLoss(trained), device_ids=[device.index] if device.type == "cuda" else None
    )
    return wrapped


def gather_objects(value, current: World) -> list:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] without a group."""
    if not current.distributed:
        return [value]
    gathered: list = [None] * current.world_size
    dist.all_gather_object(gathered, value)
    return gathered
