"""svd_core.io at the edges a new user hits: which output a path names, the metadata a video
carries, and the warnings for images that the crop or the upscale would ruin."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from svd_core.io import fit_image, output_kind, read_metadata, save_video

FRAMES = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
METADATA = {"seed": 123456789012345, "num_steps": 4, "sampler": "euler", "note": "a=b; #c\\d"}


@pytest.mark.parametrize(
    "name, kind",
    [
        ("clip.mp4", "mp4"),
        ("clip.GIF", "gif"),
        ("clip.webp", "webp"),
        ("frames", "frames"),
        ("v1.5", "frames"),  # a folder name with a dot: its "suffix" is not a word
        ("run.2b", "frames"),
        ("clip.avi/", "frames"),  # a trailing slash says folder
    ],
)
def test_the_output_path_names_a_video_file_or_a_frames_folder(name, kind, tmp_path):
    assert output_kind(f"{tmp_path}/{name}") == kind
    written = save_video(FRAMES, f"{tmp_path}/{name}", 7)
    assert written.is_dir() == (kind == "frames")


@pytest.mark.parametrize("name", ["clip.avi", "out.png", "clip.mov"])
def test_a_suffix_we_do_not_write_is_refused_naming_the_choices(name, tmp_path):
    with pytest.raises(
        ValueError, match=r"is not a format svd_core writes; use \.mp4, \.gif, \.webp"
    ):
        output_kind(tmp_path / name)


def test_a_video_name_that_is_an_existing_folder_is_refused_before_writing(tmp_path):
    (tmp_path / "vid.mp4").mkdir()
    with pytest.raises(IsADirectoryError, match="'.*vid.mp4' is an existing folder"):
        output_kind(tmp_path / "vid.mp4")
    with pytest.raises(IsADirectoryError):
        save_video(FRAMES, tmp_path / "vid.mp4", 7)
    assert os.listdir(tmp_path) == ["vid.mp4"] and os.listdir(tmp_path / "vid.mp4") == []


def test_an_output_below_a_file_names_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for name in ("notes.txt/clip.mp4", "notes.txt/deeper/clip.gif"):
        with pytest.raises(NotADirectoryError, match="'.*notes.txt' is a file, not a folder"):
            output_kind(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="'.*missing' does not exist; create it first"):
        output_kind(tmp_path / "missing" / "clip.mp4")


def test_frames_never_replace_a_file_or_a_folder_of_other_files(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        output_kind(tmp_path / "taken")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_text("x")
    with pytest.raises(FileExistsError, match="other files than frames"):
        output_kind(tmp_path / "photos")


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "clip.webp", "frames"])
def test_a_video_carries_its_metadata_and_read_metadata_returns_it(name, tmp_path):
    save_video(FRAMES, tmp_path / name, 7, METADATA)
    assert read_metadata(tmp_path / name) == METADATA
    save_video(FRAMES, tmp_path / f"plain-{name}", 7)
    assert read_metadata(tmp_path / f"plain-{name}") == {}


def _warnings_of(image: torch.Tensor, height: int, width: int, mode: str = "crop") -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_image(image, height, width, mode)
    assert tuple(fitted.shape[-2:]) == (height, width)
    return [str(w.message) for w in caught]


def test_a_crop_that_keeps_less_than_half_or_a_large_upscale_warns():
    tall = torch.zeros(1, 3, 4000, 10)  # 4000x10 to 64x64: the crop keeps 10x10, 0.25%
    messages = _warnings_of(tall, 64, 64)
    assert any("cropped to its centred 10x10 box" in m and "0.25%" in m for m in messages)
    assert any("upscaled 6.4x" in m for m in messages)
    dot = torch.zeros(1, 3, 1, 1)  # 1x1: a flat frame, upscaled 64x
    assert [m for m in _warnings_of(dot, 64, 64) if "upscaled 64x" in m]
    assert [m for m in _warnings_of(dot, 64, 64, "squash") if "upscaled 64x" in m]


@pytest.mark.parametrize(
    "size, mode",
    [
        ((64, 64), "crop"),  # the size already
        ((90, 64), "crop"),  # the crop keeps 71%
        ((16, 16), "crop"),  # upscaled 4x: the limit, not above it
        ((200, 300), "squash"),  # squash keeps all of it
    ],
)
def test_ordinary_images_fit_without_a_warning(size, mode):
    assert _warnings_of(torch.zeros(1, 3, *size), 64, 64, mode) == []
