"""Motion conditioning measured from the data: a clip's fps, a motion score from dense optical flow,
and the motion_bucket_id it maps to, computed once per clip for the manifest.

    measure(frames, fps)        # {"fps": 12.0, "motion_score": 0.021, "motion_bucket_id": 105}
    measure_video("clip.mp4")   # the same from a file
    motion_score(frames, fps)   # short sides per second; motion_bucket(score) -> 0..255

frames: uint8 (N, H, W, 3) RGB, as decoded. Needs OpenCV (`pip install "svd-core[video]"`).

## What SVD did (Blattmann et al. 2023, "Stable Video Diffusion", arXiv 2311.15127)

- Sec. 3.1: the clips are annotated "with dense optical flow [24, 48], which we calculate at
  2 FPS" ([24] Farnebäck 2003, [48] OpenCV), and static scenes are filtered out "by removing
  any videos whose average optical flow magnitude is below a certain threshold" (Fig. 2, right:
  the distribution of that score, with a peak of near-static clips).
- App. C, "Optical Flow": flow maps at 2 fps from OpenCV's Farnebäck, stored downscaled "such that
  the shortest side is at 16px"; "averaging these maps over time and spatial coordinates" gives
  the clip's global motion score. For Stage III (the high-quality finetuning data) they compute
  "more accurate" flow with RAFT at 800x450 instead, "the motion scores are then computed
  similarly". App. E.2.2: the motion filter drops the 25% most static clips.
- App. D.2: the base model and the image-to-video models "are all conditioned on the input video's
  frame rate and motion score", which is what lets motion be varied at inference.

Not published (as far as we can find): how the score becomes motion_bucket_id (scale, offset,
linear or log, clipping), Farnebäck's parameters, the resolution the flow is computed at, the
score's unit (whether magnitudes were rescaled with the 16-px maps), and how the RAFT scores of
Stage III relate to the Farnebäck ones. Stability-AI/generative-models issues #148, #196 and
#354 ask exactly this and are open, with no answer from the authors; community fine-tuning
scripts (SVD_Xtend's train_svd.py, for one) feed a fixed 127 and say they cannot reproduce the
score. The official script defaults to 127 and warns above 255; its Streamlit demo accepts
0..511. So the number a released model expects for a given clip is unknown, and no formula here
can claim to match it.

## What we compute

1. Sample: the frames nearest the times 0, 1/sample_fps, 2/sample_fps, ... (`sample_indices`;
   sample_fps = 2 as in SVD). A clip's rate need not be a multiple: at 7 fps, frames 0, 4, 7, 11,
   14, ... and each pair's flow is divided by its own time apart.
2. Normalise: grey (OpenCV's RGB2GRAY, BT.601 weights), resized so the short side is `size` px
   (128; INTER_AREA when shrinking), so the score does not depend on the video's resolution.
3. Flow: OpenCV's Farnebäck between consecutive sampled frames, with `Farneback()`'s parameters
   (OpenCV's own tutorial values).
4. Score: the flow magnitude averaged over pixels, divided by `size` and by the pairs' time apart,
   averaged over pairs: **short sides per second**. 0.1 means the average pixel moves a tenth of
   the frame's short side each second; SVD's quantity at 2 fps is this times 0.5 s, up to the
   unit of its magnitudes (unknown, see above).

## The bucket: our calibration, not SVD's

motion_bucket_id = clip(round(scale * score), 0, 255), scale = BUCKET_SCALE = 5000 buckets per
short side per second (255 at a score of 0.051). Linear, because MovingShapes (the demo data,
svd_core.data.moving_shapes) ties speed to the bucket linearly: speed = max_speed * bucket / 255.
Measured on 2048 "train" clips (8 frames, 64x64, seed 0) with the defaults: the least-squares
slope of true bucket on score is 5035; on the 75% of clips whose triangle differs from the
background by at least 0.2 in grey level ([-1, 1] units) it is 4919 (ratio of means 5180). On
512 "heldout" clips with scale 5000: measured vs true bucket r = 0.95 and RMSE 25 buckets for
those visible clips, r = 0.69 over all clips, 7% of clips clipped at 255. tests/test_motion.py
checks these on 128 heldout clips.

## Limits

- Real footage saturates this scale: a camera pan of the whole frame by 5% of the short side
  per second already scores about 0.05, bucket 251. It fits clips like MovingShapes (one small
  object on a still background). For your own videos pass `scale=` chosen from your data (for
  example 127 / the median score of your clips, which puts the typical clip at SVD's default);
  that is a heuristic, not SVD's mapping either.
- Farnebäck on grey frames: motion between colours of equal brightness is invisible (the scatter
  above comes from such clips; MovingShapes draws colours apart in RGB, not in grey), and so is
  motion of flat, textureless regions. Camera motion and object motion count the same, and the
  mean is over all pixels: a small fast object scores like a large slow one.
- Range: OpenCV stops its image pyramid at 32 px, so displacements beyond about 0.1 short side
  between sampled frames (0.2 short sides per second at 2 fps) are underestimated, and very fast
  clips can score low. The score is per second, so a higher `sample_fps` measures the same
  constant motion with a larger range (at 8 fps, up to about 0.8 short sides per second).
- A clip needs at least two sampled frames: 1/sample_fps seconds (0.5 s at 2 fps).

Decoding: `measure_video` decodes with PyAV in `_decode_sampled`, reading every frame and keeping
the sampled ones as small grey images. svd_core.data.videos (`probe`, `read_frames`) is meant to
take over there (see that function).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .moving_shapes import MOTION_BUCKET_MAX

SAMPLE_FPS = 2.0  # SVD's rate for the flow (Sec. 3.1, App. C)
FLOW_SIZE = 128  # px: the short side the frames are resized to before the flow
DECODE_CHUNK = 32  # sampled frames decoded at a time by measure_video
BUCKET_SCALE = 5000.0  # motion_bucket_id per (short side per second): our MovingShapes calibration


@dataclass(frozen=True)
class Farneback:
    """cv2.calcOpticalFlowFarneback's parameters (the values of OpenCV's optical-flow tutorial)."""

    pyr_scale: float = 0.5  # each pyramid level is half the size of the one below
    levels: int = 3  # 128 -> 64 -> 32 px: OpenCV builds no level under 32 px anyway
    winsize: int = 15  # px: averaging window; larger is smoother and more robust to noise
    iterations: int = 3  # per pyramid level
    poly_n: int = 5  # px: neighbourhood of the polynomial expansion at each pixel
    poly_sigma: float = 1.2  # Gaussian weighting of that neighbourhood (1.1-1.2 for poly_n = 5)
    flags: int = 0  # box window (cv2.OPTFLOW_FARNEBACK_GAUSSIAN = 256 for a Gaussian one)


def _require_cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(
            'measuring motion needs OpenCV: pip install "svd-core[video]" '
            "(or pip install opencv-python-headless)"
        ) from None
    return cv2


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    return float(value)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(
            f"size must be an integer >= 32 (px of the short side the flow is computed at; "
            f"OpenCV's pyramid needs 32), got {size!r}"
        )
    return int(size)


def sample_indices(num_frames: int, fps: float, sample_fps: float = SAMPLE_FPS) -> list[int]:
    """The frames nearest the times k / sample_fps (k = 0, 1, ...) inside a clip of `num_frames`
    at `fps`: increasing, without repeats (a clip slower than sample_fps gives every frame)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise ValueError(f"num_frames must be an integer, got {num_frames!r}")
    if num_frames < 1:
        return []
    step = _positive("fps", fps) / _positive("sample_fps", sample_fps)  # frames per sample
    count = math.floor((num_frames - 1) / step + 1e-9) + 1  # k / sample_fps inside the clip
    return sorted({math.floor(k * step + 0.5) for k in range(count)})


def _analysis_frame(frame: np.ndarray, size: int, cv2) -> np.ndarray:
    """One RGB frame (H, W, 3) as uint8 grey with short side `size` (the flow's input)."""
    height, width = frame.shape[:2]
    factor = size / min(height, width)
    shape = (max(1, round(width * factor)), max(1, round(height * factor)))  # cv2 wants (W, H)
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    # INTER_AREA averages the pixels it merges (no aliasing when shrinking); it is blocky when
    # enlarging, where INTER_LINEAR is the smooth choice.
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(grey, shape, interpolation=interpolation)


def _score(greys: list[np.ndarray], indices: list[int], fps: float, size: int, flow: Farneback):
    """Mean Farnebäck flow speed over pixels and consecutive pairs, in short sides per second."""
    cv2 = _require_cv2()
    speeds = []
    for a, b, first, last in zip(greys, greys[1:], indices, indices[1:], strict=False):
        field = cv2.calcOpticalFlowFarneback(a, b, None, **asdict(flow))  # (h, w, 2) px
        magnitude = np.hypot(field[..., 0], field[..., 1]).mean(dtype=np.float64)
        speeds.append(magnitude / size * fps / (last - first))  # frames last - first apart
    return float(np.mean(speeds))


def _too_short(num_frames: int, fps: float, sample_fps: float) -> ValueError:
    needed = max(2, math.ceil(fps / sample_fps - 1e-9) + 1)
    return ValueError(
        f"a clip of {num_frames} frame(s) at {fps:g} fps is too short: motion is measured between "
        f"frames 1/sample_fps = {1 / sample_fps:g} s apart, which needs at least {needed} frames "
        f"at this fps; give a longer clip or a higher sample_fps (now {sample_fps:g})"
    )


def _flow_indices(num_frames: int, fps: float, sample_fps: float) -> list[int]:
    """`sample_indices`, or the too-short ValueError when they give fewer than two frames."""
    indices = sample_indices(num_frames, fps, sample_fps)
    if len(indices) < 2:
        raise _too_short(num_frames, fps, sample_fps)
    return indices


def _measured(fps: float, score: float, scale: float) -> dict:
    """The manifest's motion fields: {"fps", "motion_score", "motion_bucket_id"}."""
    return {
        "fps": float(fps),
        "motion_score": score,
        "motion_bucket_id": motion_bucket(score, scale),
    }


def motion_score(
    frames: np.ndarray,
    fps: float,
    sample_fps: float = SAMPLE_FPS,
    size: int = FLOW_SIZE,
    flow: Farneback = Farneback(),
) -> float:
    """A clip's motion score (see the module docstring): mean dense-flow speed in short sides per
    second, measured between its frames at `sample_fps` on grey frames with short side `size`.

    frames: uint8 (N, H, W, 3) RGB; fps: their frame rate. A still clip scores about 0 (1e-5:
    Farnebäck's residue on identical frames). Raises ValueError for anything else, or for a
    clip shorter than 1 / sample_fps seconds.
    """
    if not (
        isinstance(frames, np.ndarray)
        and frames.dtype == np.uint8
        and frames.ndim == 4
        and frames.shape[-1] == 3
        and min(frames.shape) > 0
    ):
        given = (
            f"{frames.dtype} array of shape {tuple(frames.shape)}"
            if isinstance(frames, np.ndarray)
            else type(frames).__name__
        )
        raise ValueError(
            f"frames must be a non-empty uint8 numpy array (N, H, W, 3) of RGB frames, got "
            f"{given}; from a [-1, 1] tensor (F, 3, H, W): "
            "((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()"
        )
    fps, sample_fps, size = (
        _positive("fps", fps),
        _positive("sample_fps", sample_fps),
        _check_size(size),
    )
    if not isinstance(flow, Farneback):
        raise ValueError(f"flow must be a Farneback(...), got {flow!r}")
    indices = _flow_indices(len(frames), fps, sample_fps)
    cv2 = _require_cv2()
    greys = [_analysis_frame(frames[i], size, cv2) for i in indices]
    return _score(greys, indices, fps, size, flow)


def motion_bucket(score: float, scale: float = BUCKET_SCALE) -> int:
    """motion_bucket_id in 0..255 for a motion score: round(scale * score), clipped. Monotone.

    The default scale is our calibration on MovingShapes, not SVD's (unpublished) mapping; real
    footage mostly saturates it (module docstring, "Limits").
    """
    if isinstance(score, bool) or not isinstance(score, (int, float, np.integer, np.floating)):
        raise ValueError(f"score must be a number >= 0 (a motion_score), got {score!r}")
    if not (math.isfinite(score) and score >= 0):
        raise ValueError(f"score must be a finite number >= 0 (a motion_score), got {score!r}")
    scale = _positive("scale", scale)
    return int(min(MOTION_BUCKET_MAX, math.floor(scale * score + 0.5)))


def measure(
    frames: np.ndarray,
    fps: float,
    *,
    sample_fps: float = SAMPLE_FPS,
    size: int = FLOW_SIZE,
    flow: Farneback = Farneback(),
    scale: float = BUCKET_SCALE,
) -> dict:
    """The manifest's motion fields of a clip: {"fps", "motion_score", "motion_bucket_id"}."""
    return _measured(fps, motion_score(frames, fps, sample_fps, size, flow), scale)


def _decode_sampled(
    path: Path, fps: float | None, sample_fps: float, size: int
) -> tuple[list[np.ndarray], list[int], float]:
    """The grey analysis frames of a video file or frames folder at `sample_indices`, their
    indices and the fps. Decodes through svd_core.data.videos (PyAV, seeking), DECODE_CHUNK
    sampled frames at a time, so a long video never holds more than that many full frames."""
    from .videos import probe, read_frames

    cv2 = _require_cv2()
    info = probe(path, fps)
    indices = _flow_indices(info.num_frames, info.fps, sample_fps)
    greys = []
    for chunk in range(0, len(indices), DECODE_CHUNK):
        frames = read_frames(path, indices[chunk : chunk + DECODE_CHUNK], fps)
        greys += [_analysis_frame(frame, size, cv2) for frame in frames]
    return greys, indices, info.fps


def measure_video(
    path: str | os.PathLike,
    fps: float | None = None,
    *,
    sample_fps: float = SAMPLE_FPS,
    size: int = FLOW_SIZE,
    flow: Farneback = Farneback(),
    scale: float = BUCKET_SCALE,
) -> dict:
    """`measure` of a whole video file or frames folder (svd_core.data.videos); `fps` overrides
    the container's frame rate. Raises ValueError (VideoError) for a source it cannot read."""
    if fps is not None:
        fps = _positive("fps", fps)
    sample_fps, size = _positive("sample_fps", sample_fps), _check_size(size)
    if not isinstance(flow, Farneback):
        raise ValueError(f"flow must be a Farneback(...), got {flow!r}")
    greys, indices, rate = _decode_sampled(Path(path), fps, sample_fps, size)
    return _measured(rate, _score(greys, indices, rate, size, flow), scale)
