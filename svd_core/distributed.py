"""Running on many processes with torch.distributed, as `torchrun` launches them.

`torchrun --nproc-per-node N ...` starts N processes and gives each the environment variables RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. `init_from_env` reads them and joins the
process group (nccl on CUDA, gloo on CPU); without them (a plain `python`/`svd-core` call) it
returns the one-process world, so every caller runs the same code with or without torchrun.

Sharding is by position: rank r of W takes the items r, r + W, r + 2W, ... (`shard`), and a global
training batch of B samples is split in W equal consecutive slices (`batch_slice`), so which
sample a rank works on is a function of the global index, never of the world size alone.

Training wraps the trained modules in DDP (`data_parallel`: every rank holds all weights) or FSDP
(`fully_sharded`: every rank holds 1/W of the weights, gradients and optimizer state). Either way
checkpoints hold full, unsharded CPU tensors (`full_state`, read back with `placed_like` and
`optimizer_state_like`), so a checkpoint resumes at any world size, with or without FSDP.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")


class DistributedError(ValueError):
    """A torchrun environment, world size or device that the job cannot work with."""


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


def check_device(device: str) -> None:
    """Raise DistributedError unless `device` ("cpu", "cuda", "cuda:N" or "mps") exists here.

    The message is one line naming the devices that are available.

    Under torchrun (WORLD_SIZE > 1) a GPU is asked for as plain "cuda": each rank then uses
    cuda:LOCAL_RANK, which must exist.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()  # Apple's GPUs (one process, no torchrun group)
    names = ["cpu", *(["cuda"] if gpus else []), *(f"cuda:{i}" for i in range(gpus))]
    available = ", ".join(names + (["mps"] if mps else []))
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DistributedError(f"unknown device {device!r}; available here: {available}") from None
    if parsed.type == "cpu" or (parsed.type == "mps" and mps and parsed.index in (None, 0)):
        return
    if parsed.type != "cuda":
        raise DistributedError(
            f"device {device!r} is not available on this machine; available here: {available}"
        )
    if not gpus:
        raise DistributedError(
            f"device {device!r} asked for, but this machine has no CUDA GPU "
            f"(torch.cuda.is_available() is False); available here: {available}"
        )
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if under_torchrun and parsed.index is not None:
        raise DistributedError(
            f"device {device!r} under torchrun: pass --device cuda, each rank then uses "
            "cuda:LOCAL_RANK (torchrun --nproc-per-node N for N GPUs)"
        )
    index = parsed.index if parsed.index is not None else 0
    if under_torchrun:
        index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= gpus:
        where = f"LOCAL_RANK {index} needs cuda:{index}" if under_torchrun else f"{device!r}"
        raise DistributedError(
            f"device {where}, but this machine has {gpus} CUDA GPU(s); available here: "
            f"{available}"
            + (" (use --nproc-per-node at most the GPU count)" if under_torchrun else "")
        )


def init_for_device(device: str = "cpu") -> tuple[World, str]:
    """Check `device`, join torchrun's process group for it; return (World, this rank's device).

    The group is nccl for "cuda" (each rank on cuda:LOCAL_RANK), gloo for "cpu"; without torchrun
    it is the one-process World and `device` itself.
    """
    check_device(device)
    current = init_from_env(device)
    return current, device_for(device, current)


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
        with warnings.catch_warnings():
            # FSDP warns that the UNet returns a view ((B*F, ...) -> (B, F, ...)): an in-place op
            # on it would skip its backward hook. The training losses use it out of place only
            # (and the FSDP tests compare the gradients with one process's).
            warnings.filterwarnings("ignore", "FSDP2-wrapped module .* returned a view tensor")
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


def fully_sharded(trained: torch.nn.Module, units: Sequence[torch.nn.Module], current: World):
    """FSDP (FSDP2, `torch.distributed.fsdp.fully_shard`) of `trained` over the ranks.

    Each module of `units`, innermost first, becomes one FSDP unit: its parameters (but those of
    inner units) are split along dim 0 into world_size shards, rank r keeping shard r; the unit
    all-gathers them just before its forward, frees them after it, gathers them again for its
    backward and reduce-scatters the gradients (their mean over the ranks, as DDP). So a rank holds
    1/W of the weights, gradients and AdamW state, plus about one unit's full weights at a time. A
    root unit around `trained` takes whatever no unit holds.

    Returns `forward(loss_function, *args)`, as `data_parallel` does. Afterwards the parameters
    of `trained` (and so its state_dict, and an optimizer or EMA made from them) are DTensors,
    this rank's shards; `full_state` gathers them, `placed_like` scatters full tensors back.
    Works with gloo on CPU and nccl on CUDA. Without a process group there is nothing to shard:
    it returns `data_parallel`'s plain call.
    """
    if not current.distributed:
        return data_parallel(trained, current)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    inside = set(trained.modules())
    outside = [type(unit).__name__ for unit in units if unit not in inside]
    if outside:
        raise DistributedError(
            f"FSDP units must be modules of the trained module; not found in it: {outside}"
        )
    device = next(trained.parameters()).device
    mesh = init_device_mesh(device.type, (current.world_size,))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    root = _CallLoss(trained)
    fully_shard(root, mesh=mesh)
    return root


def full_state(state, current: World):
    """`state` (nested dicts/lists of tensors, e.g. a state_dict) with full, unsharded CPU tensors.

    Every rank must call it (the shards of each DTensor are all-gathered, one tensor at a time);
    rank 0 gets the result, the other ranks None, so only the writer of the checkpoint holds a full
    copy. Plain tensors are copied to the CPU (no copy when already there).
    """
    from torch.distributed.tensor import DTensor

    def gather(value):
        if isinstance(value, dict):
            return {k: gather(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(gather(v) for v in value)
        if isinstance(value, DTensor):
            value = value.full_tensor()  # collective: every rank, same order
            return value.cpu() if current.is_main else None
        if isinstance(value, torch.Tensor):
            return value.cpu() if current.is_main else None
        return value

    gathered = gather(state)
    return gathered if current.is_main else None


def _placed_like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`value` (a full tensor) on the device of `reference`, sharded as it when it is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if value.shape != reference.shape:
        raise DistributedError(
            f"a checkpoint tensor of shape {tuple(value.shape)} for a tensor of shape "
            f"{tuple(reference.shape)}; the checkpoint is of another model"
        )
    if isinstance(reference, DTensor):
        # Every rank read the same full tensor: each takes its own shard, no communication.
        value = value.to(reference.device)
        return distribute_tensor(
            value, reference.device_mesh, reference.placements, src_data_rank=None
        )
    return value.to(reference.device)


def placed_like(
    full: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Full tensors (from a checkpoint) placed as `reference`'s tensors of the same names.

    On their device; this rank's shard where the reference is a DTensor (under FSDP).
    """
    if full.keys() != reference.keys():
        missing, unexpected = reference.keys() - full.keys(), full.keys() - reference.keys()
        raise DistributedError(
            f"checkpoint entries do not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return {name: _placed_like(value, reference[name]) for name, value in full.items()}


def optimizer_state_like(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full `optimizer.state_dict()` (from a checkpoint), ready for `optimizer.load_state_dict`.

    Each per-element state tensor (AdamW's exp_avg, exp_avg_sq: the shape of its parameter) is
    placed like its parameter, so under FSDP each rank loads its shard; AdamW's `step` count is
    a scalar that every rank keeps whole.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(saved["state"]) > len(params):
        raise DistributedError(
            f"the checkpoint's optimizer has state for {len(saved['state'])} parameters, "
            f"this optimizer has {len(params)}; the checkpoint is of another model"
        )
    state = {
        index: {
            name: _placed_like(value, params[index])
            if name != "step" and isinstance(value, torch.Tensor) and value.ndim > 0
            else value
            for name, value in entry.items()
        }
        for index, entry in saved["state"].items()
    }
    return {**saved, "state": state}


def gather_objects(value, current: World) -> list:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] without a group."""
    if not current.distributed:
        return [value]
    gathered: list = [None] * current.world_size
    dist.all_gather_object(gathered, value)
    return gathered
