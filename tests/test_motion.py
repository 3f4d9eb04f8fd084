"""svd_core.data.motion: static clips score 0, a known translation scores its speed, the score does
not depend on the resolution or the frame rate, faster is higher, MovingShapes' buckets come back,
video files measure like their frames, bad input raises one ValueError."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from svd_core.data import MovingShapes
from svd_core.data.motion import (
    BUCKET_SCALE,
    Farneback,
    measure,
    measure_video,
    motion_bucket,
    motion_score,
    sample_indices,
)

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

# Farnebäck recovers a smooth textured translation to within 0.3% at the default size (measured
# over 0.005..0.1 short sides between sampled frames); 2% leaves room for the resize, the borders
# (content entering the frame) and OpenCV builds, and is still far below the differences tested.
SPEED_TOLERANCE = 0.02
# Two measurements of the same motion (other resolution, other frame rate) differ by under 0.5%.
SAME_MOTION_TOLERANCE = 0.01
# A still clip scores below this (short sides per second; 1e-5 measured, bucket 0).
STILL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def single_threaded():
    """OpenCV and torch on one thread: the flow of small frames is faster than thread start-up."""
    cv_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    yield
    cv2.setNumThreads(cv_threads)
    torch.set_num_threads(torch_threads)


def texture_clip(height, width, num_frames, fps, velocity, seed=0):
    """uint8 (N, H, W, 3): a random grey texture moving at `velocity` (x, y) short sides per second.

    The texture is a sum of Fourier modes of up to 16 cycles per short side, periodic over the
    short side, so every resolution and every sub-pixel shift samples the same picture exactly.
    """
    rng = np.random.default_rng(seed)
    modes = np.arange(-16, 17)
    ky, kx = np.meshgrid(modes, modes, indexing="ij")
    radius = np.hypot(kx, ky)
    weights = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / (1 + radius)
    weights = weights * (radius <= 16)
    short = min(height, width)
    rows = np.exp(2j * np.pi * np.outer((np.arange(height) + 0.5) / short, modes))  # (H, 33)
    cols = np.exp(2j * np.pi * np.outer(modes, (np.arange(width) + 0.5) / short))  # (33, W)
    frames = []
    for t in range(num_frames):
        dx, dy = (t / fps) * np.asarray(velocity, dtype=np.float64)
        shifted = weights * np.exp(-2j * np.pi * (kx * dx + ky * dy))
        picture = (rows @ shifted @ cols).real  # (H, W)
        frames.append(np.clip(128 + 10 * picture, 0, 255).astype(np.uint8))
    return np.repeat(np.stack(frames)[..., None], 3, axis=-1)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """MovingShapes frames (F, 3, H, W) in [-1, 1] as uint8 (F, H, W, 3)."""
    return ((frames + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def test_sample_indices_take_the_frames_nearest_each_half_second():
    assert sample_indices(25, 12) == [0, 6, 12, 18, 24]
    assert sample_indices(15, 7) == [0, 4, 7, 11, 14]  # 3.5 frames apart: 4 and 3 in turn
    assert sample_indices(8, 14) == [0, 7]  # exactly 0.5 s long
    assert sample_indices(7, 14) == [0]  # shorter: no pair
    assert sample_indices(4, 1.0) == [0, 1, 2, 3]  # slower than 2 fps: every frame
    assert sample_indices(25, 24, sample_fps=8) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert sample_indices(0, 12) == []


def test_a_static_clip_scores_zero_and_bucket_zero():
    # Identical frames give Farnebäck's numerical residue, 1e-5 short sides per second on this
    # texture: 10,000 times below the slowest motion tested below, and bucket 0.
    frames = texture_clip(90, 160, 13, 12, (0.0, 0.0))
    assert measure(frames, 12) == {
        "fps": 12.0,
        "motion_score": pytest.approx(0.0, abs=STILL),
        "motion_bucket_id": 0,
    }
    noise = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    assert motion_score(np.stack([noise] * 13), 12) < STILL


@pytest.mark.parametrize("px_per_frame", [(1.5, 0.0), (0.0, 1.0), (1.2, -0.9), (0.3, 0.4)])
def test_a_translation_scores_its_speed_in_short_sides_per_second(px_per_frame):
    height, width, fps = 180, 320, 12
    velocity = np.asarray(px_per_frame) * fps / height  # short sides per second
    frames = texture_clip(height, width, 25, fps, velocity)
    expected = math.hypot(*px_per_frame) * fps / height  # e.g. 1.5 px * 12 / 180 = 0.1
    assert motion_score(frames, fps) == pytest.approx(expected, rel=SPEED_TOLERANCE)


def test_faster_motion_gives_a_higher_score_and_bucket():
    speeds = [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]  # short sides per second
    scores = [motion_score(texture_clip(90, 160, 13, 12, (v, 0.0)), 12) for v in speeds]
    assert all(a < b for a, b in zip(scores, scores[1:], strict=False)), scores
    buckets = [motion_bucket(s) for s in scores]
    assert buckets == sorted(buckets) and buckets[0] == 0 and buckets[-1] == 255, buckets
    assert buckets[1] < buckets[2] < buckets[3] < buckets[4]  # unclipped: strictly increasing


@pytest.mark.parametrize("shape", [(180, 320), (360, 640), (320, 180), (48, 64)])
def test_the_score_does_not_depend_on_the_resolution(shape):
    velocity = (0.06, 0.03)  # short sides per second: the same motion at every size
    reference = motion_score(texture_clip(90, 160, 13, 12, velocity), 12)
    score = motion_score(texture_clip(*shape, 13, 12, velocity), 12)
    assert score == pytest.approx(reference, rel=SAME_MOTION_TOLERANCE)


@pytest.mark.parametrize("fps", [16, 7, 25, 30])
def test_the_score_does_not_depend_on_the_frame_rate(fps):
    velocity = (0.05, 0.02)  # the same motion per second at every frame rate, 2 s long
    reference = motion_score(texture_clip(90, 160, 17, 8, velocity), 8)
    score = motion_score(texture_clip(90, 160, 2 * fps + 1, fps, velocity), fps)
    assert score == pytest.approx(reference, rel=SAME_MOTION_TOLERANCE)


def test_motion_beyond_the_documented_range_needs_a_higher_sample_fps():
    velocity, fps = (0.4, 0.0), 24  # 0.2 short sides between frames 0.5 s apart: beyond ~0.1
    frames = texture_clip(90, 160, 25, fps, velocity)
    assert motion_score(frames, fps) < 0.5 * 0.4  # at 2 fps Farnebäck loses it (documented)
    assert motion_score(frames, fps, sample_fps=8) == pytest.approx(0.4, rel=SPEED_TOLERANCE)


def test_a_whole_frame_pan_of_five_percent_per_second_nearly_saturates_the_default_scale():
    score = motion_score(texture_clip(180, 320, 25, 12, (0.05, 0.0)), 12)
    assert score == pytest.approx(0.05, rel=SPEED_TOLERANCE)
    assert 245 <= motion_bucket(score) <= 255  # the module docstring's "Limits"
    assert motion_bucket(score, scale=127 / score) == 127  # a scale chosen from one's own data


def test_moving_shapes_clips_map_back_to_their_own_buckets():
    dataset = MovingShapes("heldout", num_frames=8, size=64, seed=0)
    batch = dataset.batch(range(128))
    scores = np.array(
        [
            motion_score(to_uint8(f), float(fps))
            for f, fps in zip(batch["frames"], batch["fps"], strict=True)
        ]
    )
    true = batch["motion_bucket_id"].numpy()
    measured = np.array([motion_bucket(s) for s in scores])
    # Grey-level contrast of triangle and background, in [-1, 1] units (BT.601 weights).
    grey = np.array([0.299, 0.587, 0.114])
    contrast = np.array(
        [abs((p.colour - p.background) @ grey) for p in map(dataset.params, range(128))]
    )
    visible = contrast >= 0.2  # 108 of these 128 clips

    r_all = np.corrcoef(measured, true)[0, 1]  # 0.73 here (0.69 on all 512 heldout clips)
    r_visible = np.corrcoef(measured[visible], true[visible])[0, 1]  # 0.94 (0.95 on 512)
    rmse = np.sqrt(np.mean((measured[visible] - true[visible]) ** 2))  # 26 buckets (25 on 512)
    print(
        f"MovingShapes heldout 0..127: r = {r_all:.3f} (all), {r_visible:.3f} (visible), "
        f"RMSE {rmse:.1f} buckets (visible)"
    )
    assert r_all > 0.6 and r_visible > 0.9 and rmse < 35
    assert np.all(scores[true == 0] < 1e-6)  # still triangles are still
    low, high = measured[true < 64], measured[(true > 192) & visible]
    assert low.mean() < 50 and high.mean() > 190 and low.max() < high.min()
    # BUCKET_SCALE is the calibration the docstring describes: the least-squares slope here.
    slope = (scores[visible] @ true[visible]) / (scores[visible] @ scores[visible])
    assert slope == pytest.approx(BUCKET_SCALE, rel=0.1)


def write_video(path, frames, fps):
    """Lossless FFV1 (bgr0): the decoded frames are exactly `frames`."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("fps", [12, 7])
def test_a_video_file_measures_like_its_frames(tmp_path, fps):
    frames = texture_clip(72, 128, 2 * fps + 1, fps, (0.03, -0.02))
    path = tmp_path / "clip.mkv"
    write_video(path, frames, fps)
    assert measure_video(path) == measure(frames, fps)
    assert measure_video(path, fps=2 * fps)["fps"] == 2 * fps


def test_bad_input_raises_one_clear_value_error(tmp_path):
    frames = texture_clip(48, 64, 13, 12, (0.05, 0.0))
    bad_frames = [
        frames.tolist(),
        torch.from_numpy(frames),
        frames.astype(np.float32),
        frames[..., 0],
        frames[..., :2],
        frames[:, :0],
        frames[:0],
    ]
    for bad in bad_frames:
        with pytest.raises(ValueError, match="uint8 numpy array"):
            motion_score(bad, 12)
    with pytest.raises(ValueError, match="too short.*at least 7 frames"):
        motion_score(frames[:6], 12)
    with pytest.raises(ValueError, match="too short"):
        motion_score(frames[:1], 12)
    for fps in (0, -12, math.nan, math.inf, True, "12", None):
        with pytest.raises(ValueError, match="fps must be"):
            motion_score(frames, fps)
    for sample_fps in (0, -2.0, math.nan):
        with pytest.raises(ValueError, match="sample_fps must be"):
            motion_score(frames, 12, sample_fps=sample_fps)
    for size in (16, 0, 64.0, True):
        with pytest.raises(ValueError, match="size must be an integer >= 32"):
            motion_score(frames, 12, size=size)
    with pytest.raises(ValueError, match="flow must be a Farneback"):
        motion_score(frames, 12, flow={"winsize": 15})
    for score in (-0.1, math.nan, math.inf, "0.1", None):
        with pytest.raises(ValueError, match="score must be"):
            motion_bucket(score)
    for scale in (0, -1.0, math.inf):
        with pytest.raises(ValueError, match="scale must be"):
            motion_bucket(0.01, scale=scale)
    with pytest.raises(ValueError, match="missing.mp4' does not exist"):
        measure_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="cannot read .*notes.mp4' as a video"):
        measure_video(tmp_path / "notes.mp4")
    short = tmp_path / "short.mkv"
    write_video(short, frames[:4], 12)
    with pytest.raises(ValueError, match="too short"):
        measure_video(short)


def test_farneback_options_are_used():
    frames = texture_clip(90, 160, 13, 12, (0.06, 0.0))
    default = motion_score(frames, 12)
    assert motion_score(frames, 12, flow=Farneback()) == default
    other = motion_score(frames, 12, flow=Farneback(winsize=31, poly_n=7, poly_sigma=1.5))
    assert other != default and other == pytest.approx(default, rel=SPEED_TOLERANCE)
