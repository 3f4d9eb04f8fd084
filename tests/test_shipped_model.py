"""The shipped tiny demo model (package data in svd_core/weights/; its card is weights/README.md):
it loads strictly and it animates held-out clips.

The numbers it must beat come from the held-out truth, live: the static baseline (the first true
frame repeated) scored by the same evaluation on the same clips.
"""

from pathlib import Path

import pytest
import torch

import svd_core
from svd_core.cli import DEFAULT_MODEL_FILE, default_model_path, main
from svd_core.evaluate import evaluate
from svd_core.loading.api import inspect_checkpoint

WEIGHTS = Path(__file__).resolve().parents[1] / "svd_core" / "weights"
EXAMPLE = Path(__file__).resolve().parents[1] / "weights" / "example.png"  # beside the model card


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return svd_core.load(WEIGHTS / DEFAULT_MODEL_FILE)


def test_the_cli_default_is_the_shipped_file():
    assert default_model_path() == WEIGHTS / DEFAULT_MODEL_FILE


def test_shipped_file_is_official_layout_small_and_loads_strictly(model):
    path = WEIGHTS / DEFAULT_MODEL_FILE
    assert path.stat().st_size < 20 * 2**20
    _, report = inspect_checkpoint(path)
    assert report.layout == "official"  # svd_core.load above is strict: every key used once
    assert model.config.name == "tiny_demo"
    expected = svd_core.SVDConfig.tiny_demo()
    # Same architecture as the preset; only the measured latent scaling factor may differ.
    assert model.config.unet == expected.unet
    assert model.config.image_encoder == expected.image_encoder
    for parameter in model.parameters():
        assert torch.isfinite(parameter).all()


def test_a_short_generation_beats_the_static_baseline_and_follows_the_motion_bucket(model):
    """On 8 held-out clips the generated frames are closer to the truth than the static baseline's
    (the first true frame repeated, scored live on the same clips): in PSNR over the whole frames
    and over the shape's pixels, and in the tracked triangle's position; and the measured speed
    rises with motion_bucket_id."""
    report = evaluate(model, num_clips=8, progress=False)
    assert report.psnr > report.static_psnr, report.summary()
    assert report.shape_psnr > report.static_shape_psnr, report.summary()
    assert report.motion_error < report.static_motion_error, report.summary()
    assert report.motion_correlation > 0.5, report.summary()
    assert report.lost_frames == 0, report.summary()


def test_cli_generate_without_model_uses_the_shipped_file(tmp_path, capsys):
    output = tmp_path / "demo.gif"
    code = main(["generate", str(EXAMPLE), "-o", str(output), "--seed", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert output.is_file()
    assert str(output) in capsys.readouterr().out
