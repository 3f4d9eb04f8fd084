"""The generic training loop that every stage plugs into: settings, schedule, EMA, checkpoints, `fit`.

A stage gives `fit` the modules it trains and a `batch_loss(step, generator)`; `fit` runs the
optimizer steps with the learning-rate schedule, gradient clipping, AdamW and the EMA of the
weights, writes resumable checkpoints, and wraps the modules in DDP or FSDP under torchrun.

Determinism and resuming: every random draw of step s comes from a generator seeded by (seed, s)
(`step_generator`), and step s trains on the samples s * batch_size ... (s + 1) * batch_size - 1 of
a global sample counter, so a resumed run repeats exactly what an uninterrupted one does (and
sharding over ranks only has to offset the counter). Checkpoints are written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..io import atomic_file

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingError(ValueError):
    """A run folder, checkpoint or setting that training cannot work with."""


# ---- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings shared by both stages."""

    steps: int = 1000  # optimizer steps of the stage
    batch_size: int = 8  # clips per step
    lr: float = 3e-4  # peak learning rate (after warm-up), decayed to lr_final_ratio * lr (cosine)
    warmup_steps: int = 50  # linear warm-up from 0
    lr_final_ratio: float = 0.1  # learning rate at the last step, relative to lr
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    weight_decay: float = 0.01  # AdamW (decoupled)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # model initialization and every random draw of the training steps
    data_seed: int = 0  # MovingShapes seed (which clips exist)
    checkpoint_every: int = 100  # steps between checkpoints (and always at the last step)
    ema_decay: float = 0.999  # EMA of the weights (0 = off); the EMA weights are what gets exported

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.lr_final_ratio <= 1:
            raise TrainingError(
                f"need lr > 0, warmup_steps >= 0 and 0 <= lr_final_ratio <= 1, got lr={self.lr}, "
                f"warmup_steps={self.warmup_steps}, lr_final_ratio={self.lr_final_ratio}"
            )
        if not 0 <= self.ema_decay < 1:
            raise TrainingError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


# ---- schedule, EMA, one step ---------------------------------------------------------------------


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of one training step: a function of (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def learning_rate(tc: TrainConfig, step: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to lr_final_ratio * lr at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(tc.steps - 1 - tc.warmup_steps, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return tc.lr * (tc.lr_final_ratio + (1 - tc.lr_final_ratio) * cosine)


class EMA:
    """Exponential moving average of a module's state, with the usual warm-up of the decay.

    After step s: ema = d * ema + (1 - d) * weights, d = min(decay, (1 + s) / (10 + s)), so early
    steps are not dominated by the random initialization. decay 0 keeps a copy of the weights.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Move the average towards the module's current state."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value, 1.0 - decay)
            else:
                self.state[name].copy_(value)


def train_step(
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    compute_loss: Callable[[], torch.Tensor],
    tc: TrainConfig,
    step: int,
) -> float:
    """One optimizer step on `compute_loss()`: lr schedule, backward, clipping, AdamW, EMA."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(tc, step)
    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss()
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss is {loss.item()} at step {step}; lower --lr or check the data"
        )
    loss.backward()
    if tc.grad_clip > 0:
        params = [p for p in trained.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
    optimizer.step()
    ema.update(trained, step)
    return loss.item()


def make_optimizer(trained: nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require gradients."""
    params = [p for p in trained.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` atomically: an interrupt leaves the previous file, never a part."""
    with atomic_file(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain data only)."""
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {str(path)!r}; run the stage that writes it first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_resumable(saved: dict, tc: TrainConfig) -> None:
    """A resumed run may change steps and checkpoint_every; anything else would change its history."""
    old, new = saved, dataclasses.asdict(tc)
    changed = [
        f"{k}: {old.get(k)!r} -> {v!r}"
        for k, v in new.items()
        if k not in ("steps", "checkpoint_every") and _plain(old.get(k)) != _plain(v)
    ]
    if changed:
        raise TrainingError(
            "resuming with other training settings than the checkpoint's: "
            + ", ".join(changed)
            + "; use the same settings or a new --out folder"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def fit(
    stage_dir: Path,
    trained: nn.Module,
    batch_loss: Callable[[int, torch.Generator], torch.Tensor],
    tc: TrainConfig,
    extra: dict[str, Any],
    resume: bool,
    progress: bool = True,
    description: str = "train",
    fsdp_units: list[nn.Module] | None = None,
) -> dict[str, Any]:
    """The training loop of one stage: steps, progress bar, checkpoints, resume.

    `batch_loss(step, generator)` returns the loss of the step's batch. `extra` (configs) is stored
    in every checkpoint. Under torchrun `trained` is wrapped in DDP, or sharded with FSDP when
    `fsdp_units` lists its FSDP units (see distributed.fully_sharded); then the optimizer and the
    EMA hold this rank's shards (the EMA is elementwise, so averaging shards is averaging the full
    weights). Checkpoints hold full, unsharded tensors either way, so a run resumes at any world
    size, with or without FSDP. Returns {"ema": EMA, "losses": [...], "step_times": [...]} for the
    steps run here.
    """
    current = distributed.world()  # the batch is split by the stage's batch_loss
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / CHECKPOINT_NAME
    saved, start = None, 0
    if path.exists() and not resume:
        raise TrainingError(
            f"{str(path)!r} exists; pass --resume to continue that run or choose another --out"
        )
    if path.exists():
        saved = load_checkpoint(path)
        _check_resumable(saved["train_config"], tc)
        trained.load_state_dict(saved["model"])  # full tensors, before any sharding
        torch.set_rng_state(saved["torch_rng"])
        start = saved["step"]
    if fsdp_units is not None:
        forward = distributed.fully_sharded(trained, fsdp_units, current)
    else:
        forward = distributed.data_parallel(trained, current)
    # After sharding: under FSDP the optimizer and the EMA are over this rank's shards.
    optimizer = make_optimizer(trained, tc)
    ema = EMA(trained, tc.ema_decay)
    if saved is not None:
        ema.state = distributed.placed_like(saved["ema"], ema.state)
        optimizer.load_state_dict(distributed.optimizer_state_like(saved["optimizer"], optimizer))
    losses, step_times = [], []
    quiet = not progress or not current.is_main  # one bar, on rank 0
    bar = tqdm(
        range(start, tc.steps), desc=description, initial=start, total=tc.steps, disable=quiet
    )
    for step in bar:
        began = time.perf_counter()
        generator = step_generator(tc.seed, step)
        loss = train_step(
            trained,
            optimizer,
            ema,
            functools.partial(forward, batch_loss, step, generator),
            tc,
            step,
        )
        loss = distributed.mean_over_ranks(loss, current)  # the global batch's loss on every rank
        losses.append(loss)
        step_times.append(time.perf_counter() - began)
        bar.set_postfix(loss=f"{loss:.4f}", s_per_step=f"{step_times[-1]:.2f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
            state = {  # full CPU tensors on rank 0 (gathered from the shards under FSDP)
                "model": distributed.full_state(trained.state_dict(), current),
                "ema": distributed.full_state(ema.state, current),
                "optimizer": distributed.full_state(optimizer.state_dict(), current),
                "step": step + 1,
                "samples_seen": (step + 1) * tc.batch_size,  # the global sample counter
                "torch_rng": torch.get_rng_state(),
                "train_config": dataclasses.asdict(tc),
                **extra,
            }
            if current.is_main:
                save_checkpoint(path, state)
            distributed.barrier(current)  # nobody reads or moves on before the file is complete
    return {"ema": ema, "losses": losses, "step_times": step_times}
