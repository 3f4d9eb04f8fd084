"""MovingShapes: determinism, shapes and ranges, the motion law, objects inside the frame, the
direction readable from the first frame, disjoint splits, batching."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from svd_core.data import Clip, MovingShapes
from svd_core.data.moving_shapes import FPS_RANGE, MARGIN

torch.set_num_threads(1)

FRAMES = 8
SIZE = 64


@pytest.fixture(scope="module")
def heldout():
    return MovingShapes("heldout", num_frames=FRAMES, size=SIZE, seed=0)


def test_lengths_and_clip_fields(heldout):
    assert len(MovingShapes("train")) == 1_000_000
    assert len(heldout) == 512
    clip = heldout[3]
    assert isinstance(clip, Clip)
    assert clip.frames.shape == (FRAMES, 3, SIZE, SIZE) and clip.frames.dtype == torch.float32
    assert clip.positions.shape == (FRAMES, 2) and clip.positions.dtype == torch.float32
    assert clip.direction.shape == (2,) and clip.direction.dtype == torch.float32
    assert isinstance(clip.fps, float) and isinstance(clip.motion_bucket_id, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        clip.fps = 3.0


def test_clips_are_deterministic_and_depend_on_seed_and_index(heldout):
    again = MovingShapes("heldout", num_frames=FRAMES, size=SIZE, seed=0)
    for index in (0, 7, 511):
        a, b = heldout[index], again[index]
        assert torch.equal(a.frames, b.frames) and torch.equal(a.positions, b.positions)
        assert (a.fps, a.motion_bucket_id) == (b.fps, b.motion_bucket_id)
    assert torch.equal(heldout[-1].frames, heldout[511].frames)
    other_seed = MovingShapes("heldout", num_frames=FRAMES, size=SIZE, seed=1)
    assert not torch.equal(heldout[0].frames, other_seed[0].frames)
    assert not torch.equal(heldout[0].frames, heldout[1].frames)


def test_values_and_conditioning_ranges():
    dataset = MovingShapes("train", num_frames=FRAMES, size=SIZE)
    frames = dataset.batch(range(64))["frames"]
    assert frames.min() >= -1 and frames.max() <= 1
    params = [dataset.params(i) for i in range(400)]
    fps = torch.tensor([p.fps for p in params])
    motion = torch.tensor([p.motion_bucket_id for p in params])
    assert fps.min() == FPS_RANGE[0] and fps.max() == FPS_RANGE[1]  # both ends drawn
    assert torch.equal(fps, fps.round()) and torch.equal(motion, motion.round())
    assert motion.min() >= 0 and motion.max() <= 255 and motion.max() > 240 and motion.min() < 15
    direction = torch.tensor(np.stack([p.direction for p in params]))
    assert torch.allclose(direction.norm(dim=-1), torch.ones(400, dtype=torch.float64), atol=1e-6)
    angles = torch.atan2(direction[:, 1], direction[:, 0]) / (math.pi / 4)
    assert torch.allclose(angles, angles.round(), atol=1e-5)  # multiples of 45 degrees
    assert len(set(angles.round().remainder(8).tolist())) == 8
    # conditioning independent of the image: fps and motion uncorrelated with the object's size
    sizes = torch.tensor([np.ptp(p.vertices[:, 0]) for p in params])
    assert abs(np.corrcoef(sizes, motion)[0, 1]) < 0.2 and abs(np.corrcoef(sizes, fps)[0, 1]) < 0.2


def test_motion_law_positions_follow_motion_bucket_and_fps():
    dataset = MovingShapes("train", num_frames=FRAMES, size=SIZE)
    batch = dataset.batch(range(200))
    t = torch.arange(FRAMES, dtype=torch.float32)[None, :, None]
    speed = dataset.max_speed * batch["motion_bucket_id"] / 255  # px/s
    step = (speed / batch["fps"])[:, None, None]  # px per frame
    expected = batch["positions"][:, :1] + t * step * batch["direction"][:, None]
    assert torch.allclose(batch["positions"], expected, atol=1e-4)
    # The default speed scale: the longest triangle, along an axis, at the lowest fps, fills the room.
    room = SIZE - 1 - 2 * MARGIN - 28  # the longest triangle: 28 px at 64x64
    assert dataset.max_speed == pytest.approx(room * FPS_RANGE[0] / (FRAMES - 1))


def test_rendered_object_moves_by_the_step():
    # With a plain background and a whole-pixel step to the right, frame t is frame 0 shifted by
    # t * step pixels: the renderer draws the triangle exactly where `positions` says.
    dataset = MovingShapes("train", num_frames=FRAMES, size=SIZE)
    index = next(i for i in range(100) if dataset.params(i).direction[0] == 1)
    params = dataset.params(index)
    params = dataclasses.replace(
        params, step=2.0, gradient=np.zeros(3), start=np.array([MARGIN + 10.0, 30.3])
    )
    frames = dataset.render([params])[0]
    for t in range(1, FRAMES):
        assert torch.allclose(frames[t], frames[0].roll(2 * t, dims=-1), atol=1e-5)


def test_static_clips_are_static():
    dataset = MovingShapes("train", num_frames=FRAMES, size=SIZE)
    index = next(i for i in range(5000) if dataset.params(i).motion_bucket_id == 0)
    clip = dataset[index]
    assert torch.equal(clip.frames, clip.frames[:1].expand_as(clip.frames))
    assert torch.equal(clip.positions, clip.positions[:1].expand_as(clip.positions))


def test_objects_stay_inside_the_frame():
    dataset = MovingShapes("train", num_frames=FRAMES, size=SIZE)
    tightest = math.inf
    for index in range(3000):  # geometry only: every corner of every frame inside the margin
        params = dataset.params(index)
        corners = dataset.positions(params)[:, None, :] + params.vertices[None]  # (F, 3, 2)
        slack = min(corners.min() - MARGIN, SIZE - 1 - MARGIN - corners.max())
        assert slack >= -1e-9, index
        tightest = min(tightest, slack)
    assert tightest < 0.5  # the draws do reach the edge
    # Rendered: the 2-px border is pure background, the same in every frame.
    frames = dataset.batch(range(200))["frames"]
    ring = torch.ones(SIZE, SIZE, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    border = frames[..., ring]  # (B, F, 3, N)
    assert torch.equal(border, border[:, :1].expand_as(border))


def test_every_triangle_fits_at_the_largest_speed():
    # The default max_speed leaves room for every drawn triangle, moving at 255 and the lowest fps:
    # on each axis, its extent plus its travel fits between the margins.
    for frames, size in ((5, 32), (FRAMES, SIZE), (14, 64)):
        dataset = MovingShapes("train", num_frames=frames, size=size)
        for index in range(300):
            params = dataset.params(index)
            travel = (frames - 1) * dataset.max_speed / FPS_RANGE[0] * np.abs(params.direction)
            extent = np.ptp(params.vertices, axis=0)
            assert (extent + travel <= size - 1 - 2 * MARGIN + 1e-9).all(), (frames, size, index)


def test_direction_is_readable_from_the_first_frame(heldout):
    # Orientation from the first frame's pixel moments: the long axis is the principal axis of the
    # object's mass, and the apex is on the side of the long tail (positive third moment).
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    design = np.stack([np.ones(SIZE * SIZE), x.ravel(), y.ravel()], axis=1)
    ring = np.ones((SIZE, SIZE), dtype=bool)
    ring[2:-2, 2:-2] = False
    for index in range(100):
        clip = heldout[index]
        frame = clip.frames[0].double().numpy()  # (3, H, W)
        coefficients, *_ = np.linalg.lstsq(design[ring.ravel()], frame[:, ring].T, rcond=None)
        background = (design @ coefficients).T.reshape(3, SIZE, SIZE)
        mass = np.linalg.norm(frame - background, axis=0)
        centre = np.array([(mass * x).sum(), (mass * y).sum()]) / mass.sum()
        offsets = np.stack([x - centre[0], y - centre[1]], axis=-1)  # (H, W, 2)
        covariance = np.einsum("hw,hwi,hwj->ij", mass, offsets, offsets) / mass.sum()
        axis = np.linalg.eigh(covariance)[1][:, -1]
        along = offsets @ axis
        axis = axis * np.sign((mass * along**3).sum())
        assert axis @ clip.direction.double().numpy() > 0.99, index


def test_train_and_heldout_are_disjoint():
    train = MovingShapes("train", num_frames=FRAMES, size=SIZE)
    heldout = MovingShapes("heldout", num_frames=FRAMES, size=SIZE)
    key = lambda p: tuple(np.round(np.concatenate([p.colour, p.background, p.start]), 6))  # noqa: E731
    train_keys = {key(train.params(i)) for i in range(5000)}
    heldout_keys = {key(heldout.params(i)) for i in range(len(heldout))}
    assert len(heldout_keys) == len(heldout)
    assert not train_keys & heldout_keys


def test_collate_and_batch_agree_and_work_with_a_dataloader(heldout):
    clips = [heldout[i] for i in (4, 9, 2)]
    batch = MovingShapes.collate(clips)
    assert batch["frames"].shape == (3, FRAMES, 3, SIZE, SIZE)
    assert batch["fps"].shape == batch["motion_bucket_id"].shape == (3,)
    assert batch["positions"].shape == (3, FRAMES, 2) and batch["direction"].shape == (3, 2)
    assert batch["fps"][1] == clips[1].fps and torch.equal(batch["frames"][2], clips[2].frames)
    fast = heldout.batch([4, 9, 2])
    assert fast.keys() == batch.keys()
    for name in batch:
        assert torch.equal(fast[name], batch[name]), name
    loader = DataLoader(heldout, batch_size=4, collate_fn=MovingShapes.collate)
    first = next(iter(loader))
    assert first["frames"].shape == (4, FRAMES, 3, SIZE, SIZE)
    assert torch.equal(first["frames"][1], heldout[1].frames)


def test_other_sizes_and_frame_counts():
    dataset = MovingShapes("heldout", num_frames=5, size=32)
    clip = dataset[0]
    assert clip.frames.shape == (5, 3, 32, 32) and clip.positions.shape == (5, 2)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        MovingShapes("test")
    with pytest.raises(ValueError, match="num_frames must be an integer >= 2, got 1"):
        MovingShapes(num_frames=1)
    with pytest.raises(ValueError, match="size must be an integer >= 32, got 16"):
        MovingShapes(size=16)
    with pytest.raises(ValueError, match="max_speed must be in"):
        MovingShapes(max_speed=1000.0)
    with pytest.raises(ValueError, match="seed must be"):
        MovingShapes(seed=-1)
    dataset = MovingShapes("heldout")
    with pytest.raises(IndexError, match="out of range for 512 heldout clips"):
        dataset[512]
    with pytest.raises(ValueError, match="at least one"):
        MovingShapes.collate([])
