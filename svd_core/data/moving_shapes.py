"""Moving shapes: procedural clips whose motion is fixed by the first frame and the conditioning.

    ds = MovingShapes("train", num_frames=8, size=64, seed=0)  # 1,000,000 clips; "heldout": 512
    clip = ds[i]                  # Clip: frames (F, 3, H, W), fps, motion_bucket_id, positions, ...
    batch = ds.batch(range(16))   # the same as MovingShapes.collate([ds[i] ...]), rendered at once

Each clip shows one isosceles triangle (an arrow head) gliding in a straight line over a plain or
softly graded background. The apex points where the triangle moves, so the direction can be read
from the first frame alone; the speed is set by motion_bucket_id and the step per frame by fps:

    speed (px/s)       = max_speed * motion_bucket_id / 255
    step (px / frame)  = speed / fps
    position_t         = start + t * step * direction,        t = 0 .. num_frames - 1

position is the triangle's centroid (x right, y down, in pixels; the centre of pixel row i,
column j is (j, i)). fps is an integer in [6, 14], motion_bucket_id an integer in [0, 255], the
direction one of 8 (multiples of 45 degrees): all drawn independently of the image. The start is
drawn so that the whole triangle stays at least MARGIN px inside the frame in every frame, and
max_speed defaults to the largest speed for which that is always possible (the longest triangle
moving along an axis at the lowest fps for the whole clip): 26.6 px/s at 64x64 and 8 frames, so
up to 4.4 px per frame and 31 px over a clip. The triangle is 20-28 px long at 64x64
(scaled with `size`); colours and backgrounds are random, the triangle clearly off the background.

Clip i of a split is a pure function of (split, seed, i, num_frames, size): its random draws come
from numpy's generator seeded with (seed, split number, i), so "train" and "heldout" use disjoint
seed streams. Rendering is vectorised torch: coverage = clamp(0.5 - signed distance, 0, 1) gives
1-px anti-aliased edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = {"train": (0, 1_000_000), "heldout": (1, 512)}  # split -> (seed-stream number, length)
FPS_RANGE = (6, 14)  # integer frame rates, inclusive: fps_id 5..13, inside the official 5..30
MOTION_BUCKET_MAX = 255
NUM_DIRECTIONS = 8
LENGTH_RANGE = (20 / 64, 28 / 64)  # triangle length (base to apex) as a fraction of `size`
WIDTH_RATIO_RANGE = (0.55, 0.75)  # base width / length: narrow enough to show which end is the apex
MARGIN = 2.0  # px between the triangle and the frame edge, always (the 2-px border is background)
MIN_CONTRAST = 0.8  # least RGB distance (in [-1, 1] units) between triangle and background colour
GRADIENT_MAX = 0.3  # most a graded background changes per channel across the frame


@dataclass(frozen=True)
class Clip:
    """One rendered clip and the truth about its motion.

    frames: (F, 3, H, W) float32 in [-1, 1]; fps: frame rate (the model sees fps_id = fps - 1);
    motion_bucket_id: in [0, 255], proportional to the speed in px/s; positions: (F, 2) float32,
    the triangle's centroid (x, y) in px per frame; direction: (2,) float32 unit vector of motion.
    """

    frames: torch.Tensor
    fps: float
    motion_bucket_id: float
    positions: torch.Tensor
    direction: torch.Tensor


@dataclass(frozen=True)
class ClipParams:
    """Every random draw behind one clip; `render` turns a list of them into frames.

    vertices: (3, 2) triangle corners relative to its centroid (apex first); start: (2,) centroid
    in frame 0; step: px per frame; background: base colour (3,), gradient colour change (3,) and
    unit gradient direction (2,); colour: triangle colour (3,). Colours in [-1, 1].
    """

    fps: float
    motion_bucket_id: float
    direction: np.ndarray
    vertices: np.ndarray
    start: np.ndarray
    step: float
    colour: np.ndarray
    background: np.ndarray
    gradient: np.ndarray
    gradient_direction: np.ndarray


def triangle(direction: np.ndarray, length: float, width: float) -> np.ndarray:
    """Corners (3, 2) of an isosceles triangle with centroid 0 and apex along `direction` (2,)."""
    along = np.asarray(direction, dtype=np.float64)
    across = np.array([-along[1], along[0]])
    apex = (2 * length / 3) * along
    base = -(length / 3) * along
    return np.stack([apex, base + (width / 2) * across, base - (width / 2) * across])


class MovingShapes(Dataset):
    """Map-style dataset of moving-triangle clips, rendered on demand (see the module docstring).

    split: "train" (1,000,000 clips) or "heldout" (512); num_frames >= 2; size: frame height and
    width in px (>= 32); seed: chooses the whole dataset; max_speed: px/s at motion_bucket_id 255
    (default: the largest speed at which every clip stays inside the frame).
    """

    def __init__(
        self,
        split: str = "train",
        num_frames: int = 8,
        size: int = 64,
        seed: int = 0,
        max_speed: float | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        for name, value, least in (("num_frames", num_frames, 2), ("size", size, 32)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.split, self.num_frames, self.size, self.seed = split, int(num_frames), int(size), seed
        self._stream, self._length = SPLITS[split]
        # The longest triangle moving along an axis spans `length` px on that axis, plus its travel.
        room = (size - 1) - 2 * MARGIN - LENGTH_RANGE[1] * size
        fastest = room * FPS_RANGE[0] / (self.num_frames - 1)
        if max_speed is None:
            max_speed = fastest
        if not (0 <= max_speed <= fastest):
            raise ValueError(
                f"max_speed must be in [0, {fastest:.2f}] px/s for {num_frames} frames at "
                f"{size}x{size} (faster clips would leave the frame), got {max_speed!r}"
            )
        self.max_speed = float(max_speed)

    def __len__(self) -> int:
        return self._length

    def params(self, index: int) -> ClipParams:
        """The random draws of clip `index` (deterministic)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {index!r}")
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} {self.split} clips")
        index = int(index) % self._length
        rng = np.random.default_rng([self.seed, self._stream, index])
        size = self.size
        fps = float(rng.integers(FPS_RANGE[0], FPS_RANGE[1] + 1))
        motion_bucket_id = float(rng.integers(0, MOTION_BUCKET_MAX + 1))
        angle = rng.integers(NUM_DIRECTIONS) * 2 * math.pi / NUM_DIRECTIONS
        direction = np.array([math.cos(angle), math.sin(angle)])
        direction[np.abs(direction) < 1e-12] = 0.0
        length = rng.uniform(*LENGTH_RANGE) * size
        vertices = triangle(direction, length, rng.uniform(*WIDTH_RATIO_RANGE) * length)

        step = self.max_speed * motion_bucket_id / MOTION_BUCKET_MAX / fps
        travel = (
            (self.num_frames - 1) * step * direction
        )  # (2,) centroid displacement, frame 0 to F-1
        low = MARGIN - vertices.min(axis=0) - np.minimum(travel, 0)
        high = (size - 1 - MARGIN) - vertices.max(axis=0) - np.maximum(travel, 0)
        start = rng.uniform(low, np.maximum(high, low))  # high >= low by the choice of max_speed

        background = rng.uniform(-0.75, 0.75, 3)  # + gradient stays inside [-1, 1]
        graded = rng.random() < 0.5
        gradient = rng.uniform(-GRADIENT_MAX, GRADIENT_MAX, 3) * graded
        gradient_angle = rng.uniform(0, 2 * math.pi)
        for _ in range(100):  # the triangle's colour: clearly away from the background
            colour = rng.uniform(-1, 1, 3)
            if np.linalg.norm(colour - background) >= MIN_CONTRAST:
                break
        else:
            colour = np.where(background > 0, -1.0, 1.0)
        return ClipParams(
            fps=fps,
            motion_bucket_id=motion_bucket_id,
            direction=direction,
            vertices=vertices,
            start=start,
            step=step,
            colour=colour,
            background=background,
            gradient=gradient,
            gradient_direction=np.array([math.cos(gradient_angle), math.sin(gradient_angle)]),
        )

    def positions(self, params: ClipParams) -> np.ndarray:
        """Centroid (F, 2) of the triangle in every frame: start + t * step * direction."""
        t = np.arange(self.num_frames)[:, None]
        return params.start + t * params.step * params.direction

    def render(self, params: list[ClipParams]) -> torch.Tensor:
        """Frames (B, F, 3, H, W) float32 in [-1, 1] of B clips, in one vectorised pass."""
        size = self.size
        pixel = torch.arange(size, dtype=torch.float32)
        x, y = pixel[None, :], pixel[:, None]  # (1, W) and (H, 1): broadcast, never a full grid

        def stack(name: str) -> torch.Tensor:
            return torch.tensor(np.stack([getattr(p, name) for p in params]), dtype=torch.float32)

        # Background: base colour + gradient colour change * ramp (-0.5 .. 0.5 across the frame).
        gdir = stack("gradient_direction")  # (B, 2)
        ramp = (
            (x - (size - 1) / 2) * gdir[:, 0, None, None]
            + (y - (size - 1) / 2) * gdir[:, 1, None, None]
        ) / size
        background = (
            stack("background")[:, :, None, None]
            + stack("gradient")[:, :, None, None] * ramp[:, None]
        )
        background = background.clamp(-1, 1)  # (B, 3, H, W)

        # Triangle corners in every frame: (B, F, 3, 2).
        centres = torch.tensor(np.stack([self.positions(p) for p in params]), dtype=torch.float32)
        corners = centres[:, :, None, :] + stack("vertices")[:, None]
        # Signed distance to a convex polygon: the largest of the edge half-plane distances, with a
        # bevel half-plane at each corner (outward from the centroid) so that sharp corners are not
        # smeared out along their bisector.
        edges = corners.roll(-1, dims=2) - corners  # corner k -> k+1, counter-clockwise or not
        normals = torch.stack([edges[..., 1], -edges[..., 0]], dim=-1)
        normals = normals / normals.norm(dim=-1, keepdim=True)
        outward = torch.sign(((centres[:, :, None] - corners) * normals).sum(-1, keepdim=True))
        normals = -outward * normals  # point away from the centroid
        bevels = corners - centres[:, :, None]
        bevels = bevels / bevels.norm(dim=-1, keepdim=True)
        planes = torch.cat([normals, bevels], dim=2)  # (B, F, 6, 2)
        anchors = torch.cat([corners, corners], dim=2)  # a point on each plane
        offsets = (planes * anchors).sum(-1)  # (B, F, 6)
        distance = torch.full((*offsets.shape[:2], size, size), -math.inf)  # (B, F, H, W)
        for k in range(planes.shape[2]):  # running max: no (B, F, 6, H, W) intermediate
            nx, ny, offset = (
                v[..., None, None] for v in (*planes[:, :, k].unbind(-1), offsets[:, :, k])
            )
            torch.maximum(distance, nx * x + (ny * y - offset), out=distance)  # (B,F,1,W)+(B,F,H,1)
        coverage = (0.5 - distance).clamp(0, 1)[:, :, None]  # (B, F, 1, H, W)

        colour = stack("colour")[:, None, :, None, None]  # (B, 1, 3, 1, 1)
        return background[:, None] + coverage * (colour - background[:, None])

    def clip(self, params: ClipParams) -> Clip:
        """Render one clip from its draws."""
        return Clip(
            frames=self.render([params])[0],
            fps=params.fps,
            motion_bucket_id=params.motion_bucket_id,
            positions=torch.tensor(self.positions(params), dtype=torch.float32),
            direction=torch.tensor(params.direction, dtype=torch.float32),
        )

    def __getitem__(self, index: int) -> Clip:
        return self.clip(self.params(index))

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """`collate([self[i] for i in indices])`, rendered in one vectorised pass (faster)."""
        params = [self.params(int(i)) for i in indices]
        if not params:
            raise ValueError("batch needs at least one index")
        return {
            "frames": self.render(params),
            "fps": torch.tensor([p.fps for p in params], dtype=torch.float32),
            "motion_bucket_id": torch.tensor(
                [p.motion_bucket_id for p in params], dtype=torch.float32
            ),
            "positions": torch.tensor(
                np.stack([self.positions(p) for p in params]), dtype=torch.float32
            ),
            "direction": torch.tensor(np.stack([p.direction for p in params]), dtype=torch.float32),
        }

    @staticmethod
    def collate(clips: list[Clip]) -> dict[str, torch.Tensor]:
        """Stack clips into a batch: frames (B, F, 3, H, W), fps (B,), motion_bucket_id (B,),
        positions (B, F, 2), direction (B, 2). Use as a DataLoader's collate_fn."""
        if not clips:
            raise ValueError("collate needs at least one clip")
        return {
            "frames": torch.stack([c.frames for c in clips]),
            "fps": torch.tensor([c.fps for c in clips], dtype=torch.float32),
            "motion_bucket_id": torch.tensor(
                [c.motion_bucket_id for c in clips], dtype=torch.float32
            ),
            "positions": torch.stack([c.positions for c in clips]),
            "direction": torch.stack([c.direction for c in clips]),
        }
