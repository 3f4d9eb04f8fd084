"""The `svd-core` command line as a new user meets it: every problem with the output, the device or
the size is one line and exit code 2 before any weights are read; the seed of a run can always be
recovered; warnings are one line; interrupts and SIGTERM leave nothing behind; `--help` shows the
defaults. Generation runs on random tiny weights (`SVDConfig.tiny()`, 64x64).

Bad values of every sampling flag are property-tested (hypothesis, derandomized); Ctrl-C during
sampling or writing, read-only folders, refused writes, a full disk and float16 overflow each exit
with one line and leave no file (tests/README.md lists the hazards and the example counts)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    EXAMPLES,
    PROPERTY,
    UNET_BLOCK,
    ReachedTheNetworks,
    accepted,
    disk_full,
    random_model,
    spiked,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import svd_core.cli
import svd_core.io
import svd_core.loading
import svd_core.pipeline
from svd_core import sampling as sampling_module
from svd_core import save
from svd_core.io import read_metadata

pytestmark = pytest.mark.usefixtures("one_thread", "example_count")
SVD_CORE = Path(sys.executable).parent / "svd-core"  # the console script of this environment


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save(random_model(), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    Image.fromarray(ramp).save(path)
    return path


class Loaded(Exception):
    """Raised in place of reading the weights: every check before them was passed."""


@pytest.fixture
def no_loading(monkeypatch):
    def spy(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(svd_core.loading, "load", spy)


def generate(image, output, checkpoint, *extra) -> list[str]:
    return ["generate", str(image), "-o", str(output), "--model", str(checkpoint)] + [
        "--frames",
        "2",
        "--steps",
        "1",
        *extra,
    ]


def generate_args(image, output, checkpoint, *extra) -> list[str]:
    args = ["generate", str(image), "-o", str(output), "--model", str(checkpoint), "--quiet"]
    return args + ["--frames", "2", "--steps", "1", "--seed", "0", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("svd-core: error: ") and err.count("\n") == 1, err
    return err


# ---- the output path ----------------------------------------------------------------------------


def test_an_output_that_is_an_existing_folder_is_refused_before_loading(
    checkpoint, image_file, tmp_path, no_loading, capsys
):
    (tmp_path / "vid.mp4").mkdir()
    assert svd_core.cli.main(generate(image_file, tmp_path / "vid.mp4", checkpoint)) == 2
    err = one_line_error(capsys)
    assert "is an existing folder" in err and "Errno" not in err


@pytest.mark.parametrize(
    "name, expected",
    [
        ("notes.txt/clip.mp4", "'{tmp}/notes.txt' is a file, not a folder"),
        ("missing/clip.mp4", "output folder '{tmp}/missing' does not exist"),
        ("clip.avi", "'.avi' is not a format svd_core writes"),
        ("notes.txt", "'.txt' is not a format svd_core writes"),
    ],
)
def test_every_output_path_problem_is_one_line_before_loading(
    name, expected, checkpoint, image_file, tmp_path, no_loading, capsys
):
    (tmp_path / "notes.txt").write_text("mine")
    assert svd_core.cli.main(generate(image_file, tmp_path / name, checkpoint)) == 2
    assert expected.format(tmp=tmp_path) in one_line_error(capsys)


def test_a_folder_name_with_a_dot_gets_png_frames(checkpoint, image_file, tmp_path):
    args = generate(image_file, tmp_path / "v1.5", checkpoint, "--quiet", "--seed", "0")
    assert svd_core.cli.main(args) == 0
    assert sorted(os.listdir(tmp_path / "v1.5")) == ["0000.png", "0001.png"]


def test_an_image_that_is_a_folder_is_named_as_a_folder(checkpoint, tmp_path, no_loading, capsys):
    assert svd_core.cli.main(generate(tmp_path, tmp_path / "clip.mp4", checkpoint)) == 2
    assert "is a folder, not an image file" in one_line_error(capsys)


# ---- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:7", "xla"])
@pytest.mark.parametrize("command", ["generate", "generate-batch", "eval"])
def test_a_device_torch_cannot_use_here_is_one_line_naming_the_available_ones(
    device, command, checkpoint, image_file, tmp_path, no_loading, monkeypatch, capsys
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    args = {
        "generate": generate(image_file, tmp_path / "clip.mp4", checkpoint),
        "generate-batch": ["generate-batch", str(image_file.parent), "-o", str(tmp_path / "out")],
        "eval": ["eval", "--model", str(checkpoint)],
    }[command]
    assert svd_core.cli.main([*args, "--device", device]) == 2
    err = one_line_error(capsys)
    assert repr(device) in err and err.rstrip().endswith("available here: cpu")
    assert not (tmp_path / "out").exists()


# ---- the seed ------------------------------------------------------------------------------------


def test_without_seed_the_seed_is_printed_and_recorded_and_makes_the_video_again(
    checkpoint, image_file, tmp_path, capsys
):
    assert svd_core.cli.main(generate(image_file, tmp_path / "a.gif", checkpoint)) == 0
    out = capsys.readouterr().out
    printed = [line for line in out.splitlines() if line.startswith("seed ")]
    assert len(printed) == 1, out
    seed = int(printed[0].split()[1])
    assert f"--seed {seed}" in printed[0]
    metadata = read_metadata(tmp_path / "a.gif")
    assert metadata["seed"] == seed and metadata["num_steps"] == 1 and metadata["num_frames"] == 2

    again = generate(image_file, tmp_path / "b.gif", checkpoint, "--seed", str(seed), "--quiet")
    assert svd_core.cli.main(again) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert not [line for line in quiet if line.startswith("seed ")]  # --quiet: only the file has it
    first, second = (Image.open(tmp_path / name) for name in ("a.gif", "b.gif"))
    for index in range(2):
        first.seek(index)
        second.seek(index)
        assert np.array_equal(np.asarray(first.convert("RGB")), np.asarray(second.convert("RGB")))
    assert read_metadata(tmp_path / "b.gif")["seed"] == seed


def test_quiet_runs_keep_the_seed_in_the_file(checkpoint, image_file, tmp_path, capsys):
    args = generate(image_file, tmp_path / "clip.mp4", checkpoint, "--quiet")
    assert svd_core.cli.main(args) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed")]
    assert isinstance(read_metadata(tmp_path / "clip.mp4")["seed"], int)


def test_the_batch_manifest_records_the_settings_used_not_nulls(checkpoint, image_file, tmp_path):
    out = tmp_path / "out"
    args = ["generate-batch", str(image_file.parent), "-o", str(out), "--model", str(checkpoint)]
    assert svd_core.cli.main([*args, "--format", "gif", "--frames", "2", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (video,) = manifest["videos"]
    tiny = random_model().config
    for recorded in (video["settings"], manifest["settings"]):
        assert recorded["num_steps"] == tiny.num_steps and recorded["num_frames"] == 2
        assert recorded["height"] == tiny.height and recorded["sampler"] == "euler"
        assert None not in recorded.values()
    assert video["requested"]["num_steps"] is None  # as asked: the model's default
    assert read_metadata(out / "image.gif")["seed"] == video["seed"] == 0


# ---- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--height", "100"), ("--width", "72"), ("--height", "8")])
def test_sizes_are_checked_against_the_model_before_loading_with_one_rule(
    flag, value, checkpoint, image_file, tmp_path, no_loading, capsys
):
    args = generate(image_file, tmp_path / "clip.mp4", checkpoint, flag, value)
    assert svd_core.cli.main(args) == 2
    err = one_line_error(capsys)
    # the tiny model's VAE downsamples 8x and its UNet 4x: 32, the same rule whatever the value
    assert f"error: {flag}: " in err and "multiple of 32" in err and f"got {value}" in err
    help_text = svd_core.cli.build_parser()._subparsers._group_actions[0].choices["generate"]
    rule = " ".join(help_text.format_help().split())
    assert "a multiple of the model's size multiple" in rule and "64 for SVD models" in rule
    assert "32 for the tiny demo model" in rule


def test_resize_none_names_the_flags(checkpoint, image_file, tmp_path, no_loading, capsys):
    args = generate(image_file, tmp_path / "clip.mp4", checkpoint, "--resize", "none")
    args += ["--height", "32", "--width", "32"]  # the image is 64x64
    assert svd_core.cli.main(args) == 2
    err = one_line_error(capsys)
    assert "--resize crop" in err and "resize=" not in err and "64x64" in err


# ---- warnings, help ------------------------------------------------------------------------------


def test_warnings_are_one_clean_line(checkpoint, image_file, tmp_path, capsys):
    args = generate(image_file, tmp_path / "clip.gif", checkpoint, "--quiet", "--seed", "0")
    assert svd_core.cli.main([*args, "--motion-bucket", "300", "--fps", "40"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith("svd-core: warning: ") for line in lines)
    assert not any(".py" in line or "return func" in line for line in lines)


def test_help_shows_defaults_and_every_flag_says_what_it_does():
    parser = svd_core.cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("generate", "generate-batch"):
        command = commands[name]
        text = " ".join(command.format_help().split())
        assert "(default: crop)" in text and "(default: euler)" in text, name
        assert "(default: float32)" in text and "(default: cpu)" in text, name
        assert "--low-memory" in text, name
        silent = [a.dest for a in command._actions if not a.help and a.dest != "help"]
        assert not silent, f"{name}: flags without help: {silent}"
    assert "crop (the largest centred box" in " ".join(commands["generate"].format_help().split())


def test_generate_batch_low_memory_gives_the_plain_videos(checkpoint, image_file, tmp_path):
    base = ["generate-batch", str(image_file.parent), "--model", str(checkpoint)]
    base += ["--format", "png", "--frames", "2", "--steps", "2", "--quiet"]
    assert svd_core.cli.main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert svd_core.cli.main([*base, "-o", str(tmp_path / "low"), "--low-memory"]) == 0
    for index in range(2):
        plain = np.asarray(Image.open(tmp_path / "plain" / "image" / f"{index:04d}.png"))
        low = np.asarray(Image.open(tmp_path / "low" / "image" / f"{index:04d}.png"))
        # the same up to float32 round-off (the two guidance branches run one after the other)
        assert np.abs(plain.astype(int) - low.astype(int)).max() <= 1


# ---- interrupts and failed starts ----------------------------------------------------------------


def test_sigterm_while_writing_leaves_no_temporary_file(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    real_save = Image.Image.save

    def save_then_terminate(self, target, *args, **kwargs):
        real_save(self, target, *args, **kwargs)  # a partial GIF is on disk ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... when the job scheduler says stop
        time.sleep(1)  # the handler runs here

    class NotHandled(Exception):
        """What SIGTERM raises if main installed no handler of its own (so the test fails
        instead of the default handler killing the test run)."""

    def not_handled(signum, frame):
        raise NotHandled

    monkeypatch.setattr(Image.Image, "save", save_then_terminate)
    before = signal.signal(signal.SIGTERM, not_handled)
    request_cleanup = lambda: signal.signal(signal.SIGTERM, before)  # noqa: E731
    args = generate(image_file, tmp_path / "big.gif", checkpoint, "--quiet", "--seed", "0")
    assert svd_core.cli.main(args) == 143
    assert "svd-core: terminated; no output was written" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is not_handled  # main gives the handler back
    request_cleanup()


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, svd_core.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_ctrl_c_in_the_first_second_is_an_interrupt_not_a_traceback(image_file, tmp_path):
    process = subprocess.Popen(
        # 1000 steps: still sampling when the signal comes, however fast the machine
        [str(SVD_CORE), "generate", str(image_file), "-o", str(tmp_path / "clip.mp4")]
        + ["--steps", "1000", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # inside `import torch` (1-3 s on this machine)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err and process.returncode == 130, err
    assert "svd-core: interrupted; no output was written" in err
    assert os.listdir(tmp_path) == []


def test_a_batch_interrupted_after_a_video_says_what_was_kept(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a", "b"):
        Image.open(image_file).save(inputs / f"{name}.png")
    real_call = svd_core.pipeline.SVDPipeline.__call__
    calls = []

    def second_is_interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(svd_core.pipeline.SVDPipeline, "__call__", second_is_interrupted)
    out = tmp_path / "out"
    args = ["generate-batch", str(inputs), "-o", str(out), "--model", str(checkpoint)]
    assert svd_core.cli.main([*args, "--format", "gif", "--frames", "2", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "no output was written" not in err and "kept" in err and "resume" in err
    assert (out / "a.gif").is_file() and not (out / "b.gif").exists()
    records = (out / "manifest-rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["output"] for line in records] == ["a.gif"]


def test_a_batch_that_fails_to_start_leaves_no_manifest_and_no_folder(image_file, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    out = tmp_path / "out"
    args = ["generate-batch", str(image_file.parent), "-o", str(out), "--model", str(broken)]
    assert svd_core.cli.main([*args, "--quiet"]) == 2
    assert "not a safetensors file" in one_line_error(capsys)
    assert not out.exists()
    out.mkdir()  # an existing folder is kept, without a manifest of nothing
    assert svd_core.cli.main([*args, "--quiet"]) == 2
    assert os.listdir(out) == []


# ---- bad values, property-tested ----------------------------------------------------------------

CLI_OPTIONS = {  # flag -> (pipeline name, strategy of command-line text)
    "--frames": ("num_frames", st.integers(-2, 1100).map(str)),
    "--steps": ("num_steps", st.integers(-2, 1100).map(str)),
    "--decode-chunk": ("decode_chunk_size", st.integers(-2, 30).map(str)),
    "--fps": ("fps", st.sampled_from(["nan", "inf", "-1", "0.5", "1", "7", "240", "241"])),
    "--motion-bucket": (
        "motion_bucket_id",
        st.sampled_from(["-1", "0", "127", "1023", "1024", "1e9"]),
    ),
    "--cond-aug": ("cond_aug", st.sampled_from(["-0.01", "0", "0.02", "10", "11", "nan"])),
    "--max-guidance": ("max_guidance", st.sampled_from(["-1", "0", "3", "100", "101", "inf"])),
    "--seed": ("seed", st.sampled_from(["-1", "0", str(2**64 - 1), str(2**64), str(-(2**63) - 1)])),
}


@given(data=st.data())
@settings(PROPERTY, max_examples=80)
def test_cli_refuses_bad_values_in_one_line_before_loading_the_model(
    data, image_file, checkpoint, tmp_path, monkeypatch, capsys
):
    EXAMPLES["command-line values"] += 1
    flags = data.draw(st.lists(st.sampled_from(sorted(CLI_OPTIONS)), unique=True, max_size=3))
    args = []
    bad = []
    for flag in flags:
        name, strategy = CLI_OPTIONS[flag]
        text = data.draw(strategy)
        args += [flag, text]
        number = (
            int(text)
            if name in ("num_frames", "num_steps", "decode_chunk_size", "seed")
            else float(text)
        )
        if not accepted(name, number):
            bad.append((flag, text))

    def no_loading(*args, **kwargs):
        raise ReachedTheNetworks

    monkeypatch.setattr(svd_core.loading, "load", no_loading)
    argv = ["generate", str(image_file), "-o", str(tmp_path / "out.mp4"), "--quiet", *args]
    argv += ["--model", str(checkpoint)]  # not loaded: load is replaced
    capsys.readouterr()
    if not bad:
        with pytest.raises(ReachedTheNetworks):
            svd_core.cli.main(argv)
        return
    assert svd_core.cli.main(argv) == 2
    err = one_line_error(capsys)
    assert any(f"error: {flag}: " in err for flag, _ in bad), err
    assert not any(p.name.startswith(".out") or p.name == "out.mp4" for p in tmp_path.iterdir())


# ---- numeric hazards -----------------------------------------------------------------------------


def test_float16_overflow_through_the_cli_exits_2_and_writes_nothing(tmp_path, image_file, capsys):
    checkpoint = save(spiked(UNET_BLOCK, 1e6), tmp_path / "spiked.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    args = generate_args(image_file, out / "clip.gif", checkpoint, "--steps", "2", "--frames", "1")
    assert svd_core.cli.main([*args, "--dtype", "float16"]) == 2
    assert "--dtype bfloat16" in one_line_error(capsys)
    assert os.listdir(out) == []  # (bfloat16 runs this model: test_pipeline_checks.py)


# ---- Ctrl-C during sampling and writing ----------------------------------------------------------


def test_ctrl_c_during_sampling_exits_130_and_leaves_no_file(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    euler = sampling_module.SAMPLERS["euler"]
    steps_seen = []

    def interrupted_at_step_2(denoiser, x, sigmas, callback=None, progress=False):
        def report(info):
            callback(info)
            steps_seen.append(info["step"])
            if info["step"] == 2:
                raise KeyboardInterrupt

        return euler(denoiser, x, sigmas, callback=report, progress=progress)

    monkeypatch.setitem(sampling_module.SAMPLERS, "euler", interrupted_at_step_2)
    out = tmp_path / "out"
    out.mkdir()
    args = generate_args(image_file, out / "clip.mp4", checkpoint, "--steps", "4")
    assert svd_core.cli.main(args) == 130
    assert steps_seen == [0, 1, 2]
    assert "interrupted; no output was written" in capsys.readouterr().err
    assert os.listdir(out) == []


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_ctrl_c_while_writing_leaves_no_file_and_keeps_an_older_one(
    name, checkpoint, image_file, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    args = generate_args(image_file, out / name, checkpoint)
    assert svd_core.cli.main(args) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_save = Image.Image.save

    def save_then_interrupt(self, target, *args, **kwargs):
        real_save(self, target, *args, **kwargs)  # a whole frame file or a partial GIF ...
        raise KeyboardInterrupt  # ... then Ctrl-C

    def mp4_then_interrupt(frames, target, fps, comment=None):
        with open(target, "wb") as handle:
            handle.write(b"\x00" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    monkeypatch.setattr(svd_core.io, "_write_mp4", mp4_then_interrupt)
    assert svd_core.cli.main([*args, "--seed", "1"]) == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier output, untouched; no temporary files


# ---- read-only folders and full disks ------------------------------------------------------------


def test_read_only_output_folder_is_refused_before_loading(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores permissions: make the check see what a user sees
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(out) else real_access(p, mode)
        )

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although the output folder is read-only")

    monkeypatch.setattr(svd_core.loading, "load", no_loading)
    assert svd_core.cli.main(generate_args(image_file, out / "clip.mp4", checkpoint)) == 2
    assert "not writable" in one_line_error(capsys)
    out.chmod(0o755)
    assert os.listdir(out) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_folder_that_refuses_the_write_gives_one_line_and_no_file(
    code, checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    """os.access can say yes and the write still fail (ACLs, read-only mounts, network shares)."""

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(svd_core.io.tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    out.mkdir()
    assert svd_core.cli.main(generate_args(image_file, out / "clip.gif", checkpoint)) == 2
    err = one_line_error(capsys)
    assert "cannot write into the output folder" in err and os.strerror(code) in err
    assert str(out) in err and os.listdir(out) == []


def test_full_disk_while_writing_the_video_gives_one_line_and_no_file(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    def partial_mp4(frames, target, fps, comment=None):
        with open(target, "wb") as handle:
            handle.write(b"\x00" * 4096)
        disk_full()

    monkeypatch.setattr(svd_core.io, "_write_mp4", partial_mp4)
    out = tmp_path / "out"
    out.mkdir()
    assert svd_core.cli.main(generate_args(image_file, out / "clip.mp4", checkpoint)) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "clip.mp4" in err
    assert os.listdir(out) == []
