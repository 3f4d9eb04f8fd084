"""Evaluation: the tracker, PSNR and the other scores, `evaluate` with stand-in pipelines whose
answers are known (the truth, the static baseline) and with a tiny random model, and `svd-core eval`."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import randomize

import svd_core.cli
from svd_core import SVDConfig, SVDModel, SVDPipeline, Video
from svd_core.data import MovingShapes
from svd_core.evaluate import (
    MIN_TRAVEL,
    EvalReport,
    background_plane,
    evaluate,
    pearson,
    psnr,
    shape_mask,
    track,
    vae_reconstruction,
    velocity,
)
from svd_core.loading import save

torch.set_num_threads(1)

# The tracker on true clips: the coverage-weighted centroid of anti-aliased pixels against the
# triangle's exact centroid (measured: mean 0.04 px, max 0.16 px at 64x64; max 0.25 px at 32x32).
TRACK_MEAN_PX = 0.1
TRACK_MAX_PX = 0.35


def test_tracker_finds_the_true_centre_of_every_clip():
    for frames, size in ((8, 64), (5, 32)):
        batch = MovingShapes("heldout", num_frames=frames, size=size).batch(range(128))
        error = (track(batch["frames"]) - batch["positions"]).norm(dim=-1)
        assert error.mean() < TRACK_MEAN_PX and error.max() < TRACK_MAX_PX, (frames, size)


def test_tracker_tolerates_mild_noise():
    batch = MovingShapes("heldout").batch(range(32))
    noise = torch.randn(batch["frames"].shape, generator=torch.Generator().manual_seed(0))
    error = (track(batch["frames"] + 0.05 * noise) - batch["positions"]).norm(dim=-1)
    assert error.max() < 0.5


def test_tracker_finds_a_disc_drawn_independently():
    # A disc of radius 5 at a known centre on a graded background, drawn with 8x8 supersampling.
    size, centre = 48, (20.3, 27.8)
    fine = (torch.arange(size * 8, dtype=torch.float64) + 0.5) / 8 - 0.5
    y, x = torch.meshgrid(fine, fine, indexing="ij")
    inside = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= 25).double()
    coverage = inside.reshape(size, 8, size, 8).mean((1, 3))  # (H, W)
    pixels = torch.arange(size, dtype=torch.float64)
    background = torch.stack([0.1 + 0.004 * pixels[None, :] - 0.002 * pixels[:, None]] * 3)
    colour = torch.tensor([0.9, -0.5, 0.2], dtype=torch.float64)[:, None, None]
    frame = background + coverage * (colour - background)
    assert torch.allclose(
        track(frame).double(), torch.tensor(centre, dtype=torch.float64), atol=0.05
    )


def test_tracker_marks_frames_without_an_object_lost():
    pixels = torch.arange(32.0)
    frame = torch.stack([0.2 + 0.01 * pixels[None, :] + 0 * pixels[:, None]] * 3)  # (3, H, W)
    assert torch.isnan(track(frame)).all()
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        track(torch.zeros(4, 32, 32))


def test_background_plane_is_exact_for_a_graded_background():
    pixels = torch.arange(40, dtype=torch.float64)
    plane = torch.stack(
        [
            c + 0.01 * k * pixels[None, :] - 0.003 * pixels[:, None]
            for k, c in enumerate((0, 0.3, -0.2))
        ]
    )
    frame = plane.clone()
    frame[:, 10:30, 8:25] = 0.9  # an object inside the border does not move the fit
    assert torch.allclose(background_plane(frame[None])[0], plane, atol=1e-10)


def test_shape_mask_covers_the_triangle():
    dataset = MovingShapes("heldout", num_frames=4, size=64)
    for index in range(8):
        params = dataset.params(index)
        (ax, ay), (bx, by), (cx, cy) = params.vertices
        area = abs((bx - ax) * (cy - ay) - (cx - ax) * (by - ay)) / 2  # shoelace
        mask = shape_mask(dataset[index].frames)  # (F, H, W)
        assert mask.shape == (4, 64, 64)
        # Edge pixels are anti-aliased over 1 px, so the mask is the area up to about half the rim.
        perimeter = sum(
            float(np.hypot(*(params.vertices[i] - params.vertices[i - 1]))) for i in range(3)
        )
        for count in mask.sum(dim=(-2, -1)).tolist():
            assert abs(count - area) <= 0.6 * perimeter, (index, count, area)


def test_psnr_against_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    b = (a + 0.1 * torch.randn(a.shape, generator=generator)).clamp(-1, 1)
    mse = np.mean((a.double().numpy() - b.double().numpy()) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(4 / mse), rel=1e-9)
    assert psnr(a, a + 0.1) == pytest.approx(10 * math.log10(400), rel=1e-5)  # 26.02 dB
    assert psnr((a + 1) / 2, (b + 1) / 2, data_range=1.0) == pytest.approx(psnr(a, b), rel=1e-5)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[0])


def test_pearson_and_velocity():
    generator = np.random.default_rng(0)
    a, b = generator.normal(size=20), generator.normal(size=20)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert math.isnan(pearson(a, np.ones(20))) and math.isnan(pearson([1.0], [2.0]))
    positions = torch.tensor([[1.0, 2.0]]) + torch.arange(6.0)[:, None] * torch.tensor([0.5, -1.5])
    assert torch.allclose(velocity(positions), torch.tensor([0.5, -1.5]), atol=1e-6)
    positions[2] = math.nan
    assert torch.allclose(velocity(positions), torch.tensor([0.5, -1.5]), atol=1e-6)
    assert torch.isnan(velocity(positions[2:3])).all()


class Replay(SVDPipeline):
    """A stand-in pipeline that answers with the true clip or the static baseline of the clip
    whose first frame it is given, so the scores it should get are known."""

    def __init__(self, config: SVDConfig, dataset: MovingShapes, answer: str) -> None:
        self.config, self.dataset, self.answer, self.calls = config, dataset, answer, []

    def __call__(self, image, num_frames, num_steps, fps, motion_bucket_id, seed, **kwargs):
        index = next(i for i in range(16) if torch.equal(self.dataset[i].frames[0], image))
        clip = self.dataset[index]
        self.calls.append((index, num_frames, num_steps, fps, motion_bucket_id, seed))
        frames = clip.frames if self.answer == "truth" else clip.frames[:1].expand_as(clip.frames)
        return Video(frames=None, fps=fps, float_frames=(frames + 1) / 2, latents=None)


@pytest.fixture(scope="module")
def tiny_config():
    return SVDConfig.tiny()


def test_the_static_baseline_scores_as_the_static_baseline(tiny_config):
    dataset = MovingShapes("heldout", num_frames=tiny_config.num_frames, size=64)
    pipe = Replay(tiny_config, dataset, "static")
    report = evaluate(pipe, num_clips=12, progress=False)
    clips = [dataset[i] for i in range(12)]
    static_mse = np.mean(
        [(c.frames[1:].double() - c.frames[:1].double()).pow(2).mean() for c in clips]
    )
    assert report.static_psnr == pytest.approx(10 * math.log10(4 / static_mse), rel=1e-9)
    assert report.psnr == pytest.approx(report.static_psnr, rel=1e-5)
    assert report.beats_static == 0.0
    travel = [(c.positions[1:] - c.positions[:1]).norm(dim=-1).mean().item() for c in clips]
    assert report.static_motion_error == pytest.approx(np.mean(travel), rel=1e-6)
    assert report.motion_error == pytest.approx(report.static_motion_error, abs=TRACK_MAX_PX)
    assert report.speed_ratio == pytest.approx(0.0, abs=0.05)
    assert math.isnan(report.motion_correlation)  # every measured speed is 0
    assert report.shape_psnr == pytest.approx(report.static_shape_psnr, rel=1e-5)
    # A still frame misses the moved shape: on its pixels it is far worse than over whole frames.
    assert report.static_shape_psnr < report.static_psnr - 5
    assert math.isnan(report.vae_psnr)  # the stand-in pipeline has no VAE
    assert report.true_motion_correlation > 0.99
    assert [call[0] for call in pipe.calls] == list(range(12))


def test_the_true_clips_score_perfectly(tiny_config):
    dataset = MovingShapes("heldout", num_frames=tiny_config.num_frames, size=64)
    pipe = Replay(tiny_config, dataset, "truth")
    report = evaluate(pipe, num_clips=12, num_steps=3, seed=5, progress=False)
    assert report.psnr > 100 and report.static_psnr < 40
    assert report.shape_psnr > 100 and report.static_shape_psnr < 20
    moving = [dataset[i].motion_bucket_id > 0 for i in range(12)]
    assert report.beats_static == pytest.approx(np.mean(moving))
    assert report.motion_error < TRACK_MEAN_PX
    assert report.motion_correlation == pytest.approx(report.true_motion_correlation, abs=1e-6)
    assert report.motion_correlation > 0.99
    assert report.direction_score > 0.99 and report.true_direction_score > 0.99
    assert report.speed_ratio == pytest.approx(1.0, abs=0.02)
    assert report.lost_frames == 0
    # Each clip is sampled with its own conditioning, the model's frames, and seed + index.
    for index, frames, steps, fps, motion, seed in pipe.calls:
        assert (frames, steps, seed) == (tiny_config.num_frames, 3, 5 + index)
        assert (fps, motion) == (dataset[index].fps, dataset[index].motion_bucket_id)
    assert sum(row["true_travel"] >= MIN_TRAVEL for row in report.clips) >= 6


def test_report_to_dict_and_summary(tiny_config):
    dataset = MovingShapes("heldout", num_frames=tiny_config.num_frames, size=64)
    report = evaluate(Replay(tiny_config, dataset, "truth"), num_clips=3, progress=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["num_clips"] == 3 and len(data["clips"]) == 3
    assert EvalReport(**data).summary() == report.summary()
    text = report.summary()
    for words in (
        "3 held-out clips",
        "PSNR",
        "static",
        "motion error",
        "direction cosine",
        "shape",
    ):
        assert words in text


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    """Every parameter random (the constructors zero the last layer of each residual branch and
    the UNet's output conv): the videos depend on the conditioning."""
    model = SVDModel(tiny_config).eval()
    randomize(model, seed=0)
    return model


def test_evaluate_runs_a_tiny_random_model(tiny_model):
    report = evaluate(tiny_model, num_clips=2, num_steps=1, seed=3, progress=False)
    assert (report.num_frames, report.size, report.num_steps) == (5, 64, 1)  # follows the model
    for name in ("psnr", "static_psnr", "motion_error", "static_motion_error", "lost_frames"):
        assert math.isfinite(getattr(report, name)), name
    assert 0 <= report.beats_static <= 1
    # The VAE's round trip of the true clips, computed here without the evaluation code.
    clips = [MovingShapes("heldout", num_frames=5, size=64)[i].frames for i in range(2)]
    with torch.no_grad():
        decoded = [tiny_model.vae.decode(tiny_model.vae.encode(c)[None])[0] for c in clips]
    mse = np.mean(
        [
            (d[1:].double() - c[1:].double()).pow(2).mean().item()
            for d, c in zip(decoded, clips, strict=True)
        ]
    )
    assert report.vae_psnr == pytest.approx(10 * math.log10(4 / mse), rel=1e-6)
    torch.testing.assert_close(vae_reconstruction(tiny_model, clips[0]), decoded[0])
    assert math.isfinite(report.vae_shape_psnr)
    again = evaluate(SVDPipeline(tiny_model), num_clips=2, num_steps=1, seed=3, progress=False)
    assert again.to_dict() == report.to_dict()


def test_evaluate_rejects_bad_arguments(tiny_config, tiny_model):
    dataset = MovingShapes("heldout", num_frames=tiny_config.num_frames, size=64)
    pipe = Replay(tiny_config, dataset, "truth")
    with pytest.raises(ValueError, match=r"num_clips must be in \[1, 512\], got 0"):
        evaluate(pipe, num_clips=0)
    with pytest.raises(ValueError, match=r"num_clips must be in \[1, 512\], got 513"):
        evaluate(pipe, num_clips=513)
    with pytest.raises(ValueError, match="must match the model"):
        evaluate(pipe, num_clips=1, dataset=MovingShapes("heldout", num_frames=8, size=64))
    wide = Replay(dataclasses.replace(tiny_config, width=128), dataset, "truth")
    with pytest.raises(ValueError, match="square frames, got 64x128"):
        evaluate(wide, num_clips=1)


# ---- command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    return save(tiny_model, tmp_path_factory.mktemp("eval") / "tiny.safetensors", layout="official")


def test_cli_eval_prints_the_summary_and_writes_json(checkpoint, tmp_path, capsys):
    output = tmp_path / "report.json"
    args = ["eval", "--model", str(checkpoint), "--clips", "2", "--steps", "1", "--quiet"]
    assert svd_core.cli.main([*args, "--json", str(output)]) == 0
    out = capsys.readouterr().out
    assert "2 held-out clips, 5 frames at 64x64, 1 steps" in out and "PSNR" in out
    data = json.loads(output.read_text())
    assert data["num_clips"] == 2 and len(data["clips"]) == 2


def test_cli_eval_errors_exit_2_with_one_line(checkpoint, tmp_path, capsys):
    cases = [
        (["--model", str(checkpoint), "--clips", "0"], "--clips must be at least 1, got 0"),
        (["--model", str(checkpoint), "--steps", "0"], "--steps must be at least 1"),
        (["--model", str(tmp_path / "none.safetensors")], "none.safetensors"),
        (["--model", str(checkpoint), "--json", str(tmp_path / "no" / "r.json")], "does not exist"),
    ]
    for args, named in cases:
        assert svd_core.cli.main(["eval", *args, "--quiet"]) == 2, args
        error = capsys.readouterr().err
        assert error.startswith("svd-core: error:") and error.count("\n") == 1, error
        assert named in error, error
