"""The training clips: the MovingShapes dataset, batches of the global sample counter, and the random
windows of frames and crops that the VAE stage trains on."""

from __future__ import annotations

import torch

from ..config import SVDConfig
from .loop import TrainingError


def moving_shapes(cfg: SVDConfig, split: str, seed: int):
    """The MovingShapes dataset at the model's frame count and size."""
    from ..data import MovingShapes

    if cfg.height != cfg.width:
        raise TrainingError(
            f"MovingShapes renders square clips; the config is {cfg.height}x{cfg.width}"
        )
    return MovingShapes(split=split, num_frames=cfg.num_frames, size=cfg.height, seed=seed)


def clips_batch(dataset, start: int, count: int) -> dict[str, torch.Tensor]:
    """The samples start, ..., start + count - 1 of the global counter, collated (B, F, 3, H, W)."""
    return type(dataset).collate([dataset[i % len(dataset)] for i in range(start, start + count)])


def random_window(frames: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` consecutive frames of (B, F, C, H, W), a random window per clip; 0 = all frames."""
    num_frames = frames.shape[1]
    if length == 0 or length == num_frames:
        return frames
    if length > num_frames:
        raise TrainingError(f"clip_frames {length} is more than the clips' {num_frames} frames")
    starts = torch.randint(0, num_frames - length + 1, (frames.shape[0],), generator=generator)
    return torch.stack(
        [clip[s : s + length] for clip, s in zip(frames, starts.tolist(), strict=True)]
    )


def random_crop(frames: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A size x size window of (B, F, C, H, W), one random window per clip, the same in all its frames."""
    height, width = frames.shape[-2:]
    if size == 0 or (size == height and size == width):
        return frames
    if size > min(height, width):
        raise TrainingError(f"crop_size {size} is larger than the frames ({height}x{width})")
    tops = torch.randint(0, height - size + 1, (frames.shape[0],), generator=generator)
    lefts = torch.randint(0, width - size + 1, (frames.shape[0],), generator=generator)
    crops = [
        clip[..., top : top + size, left : left + size]
        for clip, top, left in zip(frames, tops.tolist(), lefts.tolist(), strict=True)
    ]
    return torch.stack(crops)
