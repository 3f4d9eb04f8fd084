"""Evaluation on held-out moving-shape clips: does the model continue the first frame correctly?

For each held-out clip (svd_core.data.MovingShapes, split "heldout") the pipeline gets the clip's
first frame, fps and motion_bucket_id, and its output is scored against the true clip:

- PSNR over frames 1..F-1, of the model and of the static baseline (the first true frame repeated).
  The headline number is the PSNR of the mean squared error over all clips (a clip that does not
  move gives the baseline an infinite per-clip PSNR, which a mean of PSNRs could not absorb);
  `beats_static` is the fraction of clips where the model's error is below the baseline's (by
  more than float round-off: a tie is not a win).
- Motion, from the triangle's centre found by `track` in every frame: the mean distance to the
  true positions (model and static baseline), the measured speed (least-squares velocity over the
  frames, in px/frame, times fps = px/s) and its Pearson correlation with motion_bucket_id, the
  cosine between measured and true direction over clips that move at least MIN_TRAVEL px, and the
  median ratio of measured to true speed. The same tracker on the true clips gives the reference.
- PSNR on the shape: over the pixels where the true frame's shape is (it differs from the
  background plane by more than SHAPE_CONTRAST), frames 1..F-1. The whole-frame PSNR is mostly
  background; this one asks whether the shape is where it should be, in its colour.
- The VAE's reconstruction of the true clip (encode every frame, decode the clip), scored like a
  generated clip: the best a model that generates through this VAE could do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .data import MovingShapes
from .pipeline import SVDPipeline

BORDER = 2  # px of frame border that is background in every clip (the data's MARGIN)
MIN_VISIBLE = 0.1  # frames whose largest difference from the background is below this: lost
MIN_COVERAGE = 0.2  # pixels whose estimated coverage is below this are ignored (sampling noise)
WINDOW = 0.35  # only pixels this fraction of the frame size from the object's interior count
TIE = 1e-6  # relative MSE difference below which the model does not beat the baseline
MIN_TRAVEL = 2.0  # px over a clip: clips that move less have no readable direction
SHAPE_CONTRAST = 0.4  # half the data's least shape-background distance (MIN_CONTRAST 0.8)


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates y, x (H, W) in float64: pixel (row i, column j) is at (j, i)."""
    pixels = torch.arange(max(height, width), dtype=torch.float64)
    return torch.meshgrid(pixels[:height], pixels[:width], indexing="ij")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements: 10 log10(data_range^2 / MSE).

    Inputs of the same shape; data_range 2.0 for images in [-1, 1]. Identical inputs give inf.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    mse = (prediction.double() - target.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def background_plane(frames: torch.Tensor, border: int = BORDER) -> torch.Tensor:
    """Background estimate (..., 3, H, W): per channel, the plane a + b x + c y fitted by least
    squares to the `border`-px ring of each frame (exact for plain and linearly graded backgrounds).
    """
    height, width = frames.shape[-2:]
    y, x = _grid(height, width)
    ring = torch.ones(height, width, dtype=torch.bool)
    ring[border:-border, border:-border] = False
    design = torch.stack([torch.ones_like(x), x, y], dim=-1)  # (H, W, 3)
    values = frames.double()[..., ring]  # (..., 3, N)
    coefficients = values @ torch.linalg.pinv(design[ring]).T  # (..., 3, 3): a, b, c per channel
    return torch.einsum("hwk,...ck->...chw", design, coefficients).to(frames.dtype)


def track(frames: torch.Tensor) -> torch.Tensor:
    """Centre (x, y) in px of the one object in each frame: (..., 3, H, W) -> (..., 2).

    1. The background is the plane fitted to the frame's 2-px border (`background_plane`).
    2. The object's colour difference c is the mean difference from the background over the pixels
       that differ by at least half the largest difference (the object's interior).
    3. Each pixel's coverage is its difference projected on c, <d, c> / |c|^2, clipped to [0, 1];
       coverages below MIN_COVERAGE are set to 0 (faint noise in generated frames).
    4. The centre is the coverage-weighted centroid of the pixels within WINDOW x frame size of
       the interior's centroid (the apex is 2/3 of the triangle's length from its centre: at most
       0.29 x size for the data's longest triangle, `moving_shapes.LENGTH_RANGE`).
       Frames with no difference of at least MIN_VISIBLE are lost: NaN.
    On true clips this is the triangle's centroid to about 0.05 px (tests/test_evaluate.py).
    """
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames must be (..., 3, H, W), got {tuple(frames.shape)}")
    frames = frames.double()
    difference = frames - background_plane(frames)  # (..., 3, H, W)
    magnitude = difference.norm(dim=-3)  # (..., H, W)
    largest = magnitude.flatten(-2).amax(-1)  # (...,)
    interior = (magnitude >= 0.5 * largest[..., None, None]).unsqueeze(-3)  # (..., 1, H, W)
    colour = (difference * interior).sum((-2, -1)) / interior.sum((-2, -1)).clamp(min=1)  # (..., 3)
    colour = colour[..., None, None]
    coverage = ((difference * colour).sum(-3) / colour.pow(2).sum(-3).clamp(min=1e-12)).clamp(0, 1)
    coverage = coverage * (coverage >= MIN_COVERAGE)  # (..., H, W)
    height, width = frames.shape[-2:]
    y, x = _grid(height, width)
    # Only pixels near the interior count: far-away speckles would drag the centroid.
    count = interior.sum((-3, -2, -1)).clamp(min=1)  # (...,)
    near_x = ((interior.squeeze(-3) * x).sum((-2, -1)) / count)[..., None, None]
    near_y = ((interior.squeeze(-3) * y).sum((-2, -1)) / count)[..., None, None]
    radius = WINDOW * max(height, width)
    coverage = coverage * ((x - near_x).pow(2) + (y - near_y).pow(2) <= radius**2)
    total = coverage.sum((-2, -1))
    centre = torch.stack(
        [(coverage * x).sum((-2, -1)) / total, (coverage * y).sum((-2, -1)) / total], dim=-1
    )
    lost = (largest < MIN_VISIBLE) | (total == 0)
    return centre.masked_fill(lost[..., None], math.nan).float()


def velocity(positions: torch.Tensor) -> torch.Tensor:
    """Least-squares velocity (px/frame) of positions (F, 2) over frame numbers; NaN frames are
    skipped; NaN if fewer than 2 frames are left."""
    frame = torch.arange(positions.shape[0], dtype=torch.float64)
    good = torch.isfinite(positions).all(-1)
    if good.sum() < 2:
        return torch.full((2,), math.nan)
    t = frame[good] - frame[good].mean()
    p = positions[good].double()
    return ((t[:, None] * (p - p.mean(0))).sum(0) / t.pow(2).sum()).float()


def pearson(a, b) -> float:
    """Pearson correlation of two equal-length sequences; NaN pairs skipped; NaN if undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson needs two 1-D sequences of one length, got {a.shape}, {b.shape}")
    good = np.isfinite(a) & np.isfinite(b)
    if good.sum() < 2:
        return math.nan
    a, b = a[good] - a[good].mean(), b[good] - b[good].mean()
    denominator = math.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


@dataclass
class EvalReport:
    """Scores of a model on held-out clips (see the module docstring for each).

    PSNRs in dB over frames 1..F-1; motion errors in px (mean over frames 1..F-1 and clips);
    correlations and cosines in [-1, 1]; `clips` has one dict of per-clip numbers per clip.
    """

    num_clips: int
    num_frames: int
    size: int
    num_steps: int
    seed: int
    psnr: float
    static_psnr: float
    beats_static: float  # fraction of clips with a lower MSE than the static baseline
    motion_error: float
    static_motion_error: float
    motion_correlation: float  # Pearson r of motion_bucket_id and the measured speed (px/s)
    true_motion_correlation: float  # the same on the true clips
    direction_score: float  # mean cosine of measured vs true direction, clips moving >= MIN_TRAVEL
    true_direction_score: float
    speed_ratio: float  # median measured / true speed over clips moving >= MIN_TRAVEL
    lost_frames: float  # fraction of generated frames where the tracker found no object
    clips: list[dict] = field(default_factory=list)
    # PSNR on the true shape's pixels; the VAE's reconstruction of the true clips (NaN where the
    # pipeline has no VAE to ask, or in reports written before these existed).
    shape_psnr: float = math.nan
    static_shape_psnr: float = math.nan
    vae_psnr: float = math.nan
    vae_shape_psnr: float = math.nan

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN and inf stay floats; json.dumps writes them as NaN/Infinity)."""
        return asdict(self)

    def summary(self) -> str:
        """A short table: the model against the static baseline and the true clips."""

        def number(value: float, digits: int = 2) -> str:
            return f"{value:>8.{digits}f}" if value is not None else f"{'-':>8}"

        rows = [  # model, static baseline, VAE reconstruction of the truth, truth
            ("PSNR, frames 1.. (dB)", self.psnr, self.static_psnr, self.vae_psnr, None),
            (
                "PSNR on the shape (dB)",
                self.shape_psnr,
                self.static_shape_psnr,
                self.vae_shape_psnr,
                None,
            ),
            ("motion error (px)", self.motion_error, self.static_motion_error, None, 0.0),
            (
                "corr(motion_bucket, speed)",
                self.motion_correlation,
                None,
                None,
                self.true_motion_correlation,
            ),
            ("direction cosine", self.direction_score, None, None, self.true_direction_score),
            ("speed / true speed", self.speed_ratio, None, None, 1.0),
        ]
        lines = [
            f"{self.num_clips} held-out clips, {self.num_frames} frames at {self.size}x{self.size}, "
            f"{self.num_steps} steps, seed {self.seed}",
            f"{'':<28}{'model':>8}{'static':>8}{'VAE':>8}{'truth':>8}",
        ]
        lines += [
            f"{name:<28}{number(a)}{number(b)}{number(v)}{number(c)}" for name, a, b, v, c in rows
        ]
        lines.append(f"{'clips better than static':<28}{number(self.beats_static)}")
        lines.append(f"{'frames lost by tracker':<28}{number(self.lost_frames)}")
        return "\n".join(lines)


def evaluate(
    model_or_pipeline,
    num_clips: int = 32,
    num_steps: int | None = None,
    seed: int = 0,
    dataset: MovingShapes | None = None,
    progress: bool = True,
    **sample_kwargs,
) -> EvalReport:
    """Generate the continuation of `num_clips` held-out clips and score it (module docstring).

    model_or_pipeline: an SVDModel or SVDPipeline with square frames. dataset: default
    MovingShapes("heldout", num_frames=model frames, size=model height, seed=0); its clips 0..N-1
    are used. Clip i is sampled with seed `seed + i` and `num_steps` (default: the model's);
    `sample_kwargs` (cond_aug, min_guidance, max_guidance, sampler, ...) go to the pipeline.
    """
    pipe = (
        model_or_pipeline
        if isinstance(model_or_pipeline, SVDPipeline)
        else SVDPipeline(model_or_pipeline)
    )
    config = pipe.config
    if config.height != config.width:
        raise ValueError(
            f"evaluation needs a model with square frames, got {config.height}x{config.width}"
        )
    if dataset is None:
        dataset = MovingShapes("heldout", num_frames=config.num_frames, size=config.height)
    if (dataset.num_frames, dataset.size) != (config.num_frames, config.height):
        raise ValueError(
            f"dataset clips ({dataset.num_frames} frames at {dataset.size}px) must match the "
            f"model ({config.num_frames} frames at {config.height}px)"
        )
    if isinstance(num_clips, bool) or not isinstance(num_clips, (int, np.integer)):
        raise ValueError(f"num_clips must be an integer, got {num_clips!r}")
    if not 1 <= num_clips <= len(dataset):
        raise ValueError(f"num_clips must be in [1, {len(dataset)}], got {num_clips}")
    num_steps = config.num_steps if num_steps is None else num_steps
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")

    indices = range(num_clips)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="eval", unit="clip")
    rows = []
    for index in indices:
        clip = dataset[index]
        video = pipe(
            clip.frames[0],
            num_frames=dataset.num_frames,
            num_steps=num_steps,
            fps=clip.fps,
            motion_bucket_id=clip.motion_bucket_id,
            seed=seed + index,
            progress=False,
            **sample_kwargs,
        )
        generated = video.float_frames * 2 - 1  # (F, 3, H, W) in [-1, 1]
        model = getattr(pipe, "model", None)
        reconstruction = None if model is None else vae_reconstruction(model, clip.frames)
        rows.append(_score_clip(clip, generated, dataset.max_speed, reconstruction))

    def column(name: str) -> np.ndarray:
        return np.array([row[name] for row in rows], dtype=np.float64)

    moving = column("true_travel") >= MIN_TRAVEL
    speed_ratio = column("speed")[moving] / column("true_speed")[moving]
    return EvalReport(
        num_clips=num_clips,
        num_frames=dataset.num_frames,
        size=dataset.size,
        num_steps=num_steps,
        seed=seed,
        psnr=_psnr_of_mse(column("mse").mean()),
        static_psnr=_psnr_of_mse(column("static_mse").mean()),
        beats_static=float((column("mse") < (1 - TIE) * column("static_mse")).mean()),
        motion_error=_nanmean(column("motion_error")),
        static_motion_error=float(column("static_motion_error").mean()),
        motion_correlation=pearson(column("motion_bucket_id"), column("speed")),
        true_motion_correlation=pearson(column("motion_bucket_id"), column("tracked_true_speed")),
        direction_score=_nanmean(column("direction_cosine")[moving]),
        true_direction_score=_nanmean(column("true_direction_cosine")[moving]),
        speed_ratio=_finite_median(speed_ratio),
        lost_frames=float(column("lost_frames").mean()),
        clips=rows,
        shape_psnr=_psnr_of_mse(column("shape_mse").mean()),
        static_shape_psnr=_psnr_of_mse(column("static_shape_mse").mean()),
        vae_psnr=_psnr_of_mse(column("vae_mse").mean()),
        vae_shape_psnr=_psnr_of_mse(column("vae_shape_mse").mean()),
    )


@torch.no_grad()
def vae_reconstruction(model, frames: torch.Tensor) -> torch.Tensor:
    """The model's VAE round trip of one clip: (F, 3, H, W) in [-1, 1] -> (F, 3, H, W) float32.

    Every frame is encoded to its posterior mode and the clip is decoded as one video (all frames
    at once), in the VAE's own dtype and device; a low-memory model reads the VAE for the call.
    """
    with model.resident("vae_encoder", "vae_decoder"):
        parameter = next(model.vae.parameters())
        latents = model.vae.encode(frames.to(parameter))  # (F, 4, h, w)
        return model.vae.decode(latents[None])[0].float().cpu()


def shape_mask(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., H, W) bool: pixels that differ from the frame's background plane by
    more than SHAPE_CONTRAST (the shape, without its faint anti-aliased rim)."""
    return (frames - background_plane(frames)).norm(dim=-3) > SHAPE_CONTRAST


def _score_clip(
    clip, generated: torch.Tensor, max_speed: float, reconstruction: torch.Tensor | None
) -> dict:
    """Per-clip numbers: MSEs, tracked motion and its comparison with the truth."""
    truth = clip.frames
    later = slice(1, None)  # frames 1..F-1; frame 0 is the conditioning image
    shape = shape_mask(truth[later]).unsqueeze(-3).expand_as(truth[later])  # (F-1, 3, H, W)

    def errors(frames: torch.Tensor | None) -> tuple[float, float]:
        """MSE against the truth over frames 1..F-1, whole frames and on the shape."""
        if frames is None:
            return math.nan, math.nan
        squared = (frames.expand_as(truth)[later].double() - truth[later].double()).pow(2)
        return squared.mean().item(), squared[shape].mean().item()

    mse, shape_mse = errors(generated)
    static_mse, static_shape_mse = errors(truth[:1])
    vae_mse, vae_shape_mse = errors(reconstruction)
    tracked, tracked_true = track(generated), track(truth)  # (F, 2) each
    error = (tracked[later] - clip.positions[later]).norm(dim=-1)
    static_error = (clip.positions[:1] - clip.positions[later]).norm(dim=-1)
    measured, measured_true = velocity(tracked), velocity(tracked_true)  # px/frame
    travel = (clip.positions[-1] - clip.positions[0]).norm().item()
    return {
        "fps": clip.fps,
        "motion_bucket_id": clip.motion_bucket_id,
        "mse": mse,
        "static_mse": static_mse,
        "shape_mse": shape_mse,
        "static_shape_mse": static_shape_mse,
        "vae_mse": vae_mse,
        "vae_shape_mse": vae_shape_mse,
        "psnr": _psnr_of_mse(mse),
        "static_psnr": _psnr_of_mse(static_mse),
        "motion_error": _nanmean(error.numpy()),
        "static_motion_error": static_error.mean().item(),
        "true_travel": travel,
        "true_speed": max_speed * clip.motion_bucket_id / 255,
        "speed": measured.norm().item() * clip.fps,
        "tracked_true_speed": measured_true.norm().item() * clip.fps,
        "direction_cosine": _cosine(measured, clip.direction),
        "true_direction_cosine": _cosine(measured_true, clip.direction),
        "lost_frames": torch.isnan(tracked[:, 0]).float().mean().item(),
    }


def _cosine(vector: torch.Tensor, direction: torch.Tensor) -> float:
    norm = vector.norm().item()
    return (vector @ direction).item() / norm if norm > 0 else math.nan


def _psnr_of_mse(mse: float, data_range: float = 2.0) -> float:
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _finite_median(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan
