"""An installed svd_core, not a checkout, makes the demo video: the wheel carries the shipped model.

The test builds a wheel from the tracked files (copied into a temporary folder, as a clone or
`pip install git+URL` sees them), installs it into a new, empty target folder, and runs that
installation's `svd-core generate` from an unrelated folder, with the default model. The target
has svd_core alone; torch and the other dependencies come from this environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "svd_core/weights/svd_core_tiny_demo.safetensors"


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [name for name in listed.split("\0") if name]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--disable-pip-version-check", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("svd_core-*.whl")
    return built


def test_the_wheel_carries_the_shipped_model(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        size = archive.getinfo(MODEL).file_size
    assert MODEL in names
    assert size == (ROOT / MODEL).stat().st_size
    assert not [n for n in names if n.startswith(("tests/", "weights/", "benchmarks/"))]


def test_an_installed_wheel_generates_the_demo_video_from_any_folder(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--disable-pip-version-check", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    shutil.copy(ROOT / "weights" / "example.png", elsewhere / "photo.png")
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import svd_core.cli as c; print(c.default_model_path())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == target / MODEL  # the installed copy, not the checkout
    result = subprocess.run(
        [str(target / "bin" / "svd-core"), "generate", "photo.png", "-o", "clip.mp4"]
        + ["--steps", "2", "--seed", "0", "--quiet"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 8 frames at 7 fps to clip.mp4" in result.stdout
    assert (elsewhere / "clip.mp4").stat().st_size > 0
