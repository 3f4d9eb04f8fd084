"""Video files as training clips (svd_core.data.videos): short videos written here from MovingShapes
in several containers and codecs (mp4/H.264, webm/VP9, GIF, a folder of PNG frames), with a corrupt
file and a too-short one among them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from svd_core.data import MovingShapes
from svd_core.data.videos import (
    VideoClips,
    VideoError,
    VideoSource,
    probe,
    read_frames,
    read_manifest,
    resize_and_crop,
    write_manifest,
)
from svd_core.io import save_video, to_uint8

av = pytest.importorskip("av")

FRAMES, FPS = 12, 8.0


def shapes_frames(index: int, num_frames: int = FRAMES) -> np.ndarray:
    """uint8 (F, 64, 64, 3) frames of a MovingShapes clip."""
    clip = MovingShapes("heldout", num_frames=num_frames, size=64, seed=0)[index]
    return to_uint8((clip.frames + 1) / 2)


def write_webm(frames: np.ndarray, path: Path, fps: float) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"lossless": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder: a.mp4, b.webm, c.gif, d/ (PNG frames), broken.mp4 (not a video), short.mp4 (3 frames)."""
    folder = tmp_path_factory.mktemp("videos")
    originals = {name: shapes_frames(i) for i, name in enumerate(("a.mp4", "b.webm", "c.gif", "d"))}
    save_video(originals["a.mp4"], folder / "a.mp4", FPS)
    write_webm(originals["b.webm"], folder / "b.webm", FPS)
    save_video(originals["c.gif"], folder / "c.gif", FPS)
    save_video(originals["d"], folder / "d", FPS)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    save_video(shapes_frames(9, num_frames=3), folder / "short.mp4", FPS)
    (folder / "notes.txt").write_text("not a video")
    return folder, originals


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


# PSNR floors: H.264 at imageio's quality 8; lossless VP9, but in yuv420p (half-resolution colour:
# about 42 dB on these sharp-edged frames); GIF's 256-colour palette; PNG frames exact.
@pytest.mark.parametrize(
    "name, min_psnr", [("a.mp4", 30), ("b.webm", 38), ("c.gif", 25), ("d", 99)]
)
def test_every_container_probes_and_decodes_its_frames(videos, name, min_psnr):
    folder, originals = videos
    info = probe(folder / name)
    assert (info.num_frames, info.height, info.width) == (FRAMES, 64, 64)
    assert info.fps == pytest.approx(FPS, rel=0.05) or name == "d"  # a folder has no rate
    frames = read_frames(folder / name, range(FRAMES))
    assert frames.shape == (FRAMES, 64, 64, 3) and frames.dtype == np.uint8
    assert psnr(frames, originals[name]) > min_psnr


@pytest.mark.parametrize("name", ["a.mp4", "b.webm", "c.gif", "d"])
def test_a_few_frames_decode_to_the_same_pixels_as_the_whole_video(videos, name):
    folder, _ = videos
    whole = read_frames(folder / name, range(FRAMES))
    some = read_frames(folder / name, [4, 7, 11])
    np.testing.assert_array_equal(some, whole[[4, 7, 11]])


def test_asking_past_the_end_or_a_broken_file_is_a_video_error(videos):
    folder, _ = videos
    with pytest.raises(VideoError, match="frame 12"):
        read_frames(folder / "a.mp4", [10, 12])
    with pytest.raises(VideoError, match="broken.mp4"):
        probe(folder / "broken.mp4")
    with pytest.raises(ValueError, match="increasing"):
        read_frames(folder / "a.mp4", [3, 2])


def test_bad_files_are_skipped_and_counted_and_strict_mode_fails(videos):
    folder, _ = videos
    clips = VideoClips.from_folder(folder, num_frames=4, height=64, width=64)
    assert sorted(Path(s.path).name for s in clips.sources) == ["a.mp4", "b.webm", "c.gif", "d"]
    reasons = {Path(path).name: reason for path, reason in clips.skipped.items()}
    assert sorted(reasons) == ["broken.mp4", "short.mp4"]
    assert "too short: 3 usable frames" in reasons["short.mp4"]
    with pytest.raises(VideoError, match="broken.mp4"):
        VideoClips.from_folder(folder, num_frames=4, height=64, width=64, strict=True)


def test_a_clip_is_a_pure_function_of_the_index_and_seed(videos):
    folder, _ = videos
    options = dict(num_frames=4, height=64, width=128, crop="random", frame_stride=2)
    clips = VideoClips.from_folder(folder, seed=3, **options)
    first, again = clips[1], VideoClips.from_folder(folder, seed=3, **options)[1]
    assert torch.equal(first.frames, again.frames) and first.first_frame == again.first_frame
    assert first.frames.shape == (4, 3, 64, 128)
    assert first.frames.min() >= -1 and first.frames.max() <= 1
    assert first.fps == pytest.approx(FPS / 2) and first.stride == 2
    others = [VideoClips.from_folder(folder, seed=s, **options)[1].first_frame for s in range(8)]
    assert len(set(others)) > 1  # the start is drawn


def test_target_fps_picks_the_stride_and_the_clip_reports_its_fps(videos):
    folder, _ = videos
    clips = VideoClips.from_folder(folder, num_frames=3, height=64, width=64, target_fps=4)
    clip = clips[0]
    assert clip.stride == 2 and clip.fps == pytest.approx(4.0, rel=0.05)


def test_a_source_that_fails_while_decoding_passes_the_clip_to_the_next(videos, monkeypatch):
    import svd_core.data.videos as module

    folder, _ = videos
    clips = VideoClips.from_folder(folder, num_frames=4, height=64, width=64)
    real = module.read_frames

    def webm_breaks(path, indices, fps=None):
        if str(path).endswith(".webm"):
            raise VideoError(f"cannot decode {str(path)!r}: damaged packet")
        return real(path, indices, fps)

    monkeypatch.setattr(module, "read_frames", webm_breaks)
    clip = clips[1]  # b.webm's index: c.gif gives the clip
    assert clip.source.endswith("c.gif")
    assert "damaged packet" in clips.skipped[str(folder / "b.webm")]
    clips.strict = True
    with pytest.raises(VideoError, match="damaged packet"):
        clips[1]


def test_manifests_give_per_clip_fps_motion_and_parts(videos, tmp_path):
    folder, _ = videos
    rows = [
        {"path": str(folder / "a.mp4"), "motion_bucket_id": 40, "split": "train"},
        {"path": str(folder / "d"), "fps": 12, "motion_bucket_id": 200, "start": 0.25},
        {"path": str(folder / "c.gif"), "split": "val"},
    ]
    jsonl = tmp_path / "clips.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    csv = tmp_path / "clips.csv"
    csv.write_text(
        "path,fps,motion_bucket_id,start,end,split\n"
        + "".join(
            f"{r['path']},{r.get('fps', '')},{r.get('motion_bucket_id', '')},"
            f"{r.get('start', '')},,{r.get('split', '')}\n"
            for r in rows
        )
    )
    assert read_manifest(jsonl) == read_manifest(csv)
    clips = VideoClips.from_manifest(jsonl, num_frames=4, height=64, width=64)
    a, d, c = (clips[i] for i in range(3))
    assert (a.motion_bucket_id, d.motion_bucket_id, c.motion_bucket_id) == (40, 200, 127)
    assert d.fps == 12 and d.first_frame >= 3  # start 0.25 s at 12 fps: frame 3 on
    train = VideoClips.from_manifest(jsonl, split="train", num_frames=4, height=64, width=64)
    assert [Path(s.path).name for s in train.sources] == ["a.mp4"]
    written = write_manifest(tmp_path / "again.jsonl", read_manifest(jsonl))
    assert read_manifest(written) == read_manifest(jsonl)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": "x.mp4", "speed": 3}) + "\n")
    with pytest.raises(VideoError, match=r"unknown columns \['speed'\]"):
        read_manifest(bad)


def test_resize_and_crop_keeps_the_aspect_and_bad_options_are_refused():
    frames = torch.arange(2 * 3 * 40 * 100, dtype=torch.float32).reshape(2, 3, 40, 100)
    out = resize_and_crop(frames, 64, 64, "center", torch.Generator())
    assert out.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="multiple of 64"):
        VideoClips([VideoSource("x.mp4")], num_frames=4, height=100, width=64)
    with pytest.raises(ValueError, match="crop must be one of"):
        VideoClips([VideoSource("x.mp4")], num_frames=4, height=64, width=64, crop="middle")


def test_annotate_writes_a_manifest_that_the_dataset_reads(videos, tmp_path, capsys):
    """`svd-core annotate`: fps and motion of every readable video, the bad ones listed."""
    import svd_core.cli

    folder, _ = videos
    manifest = tmp_path / "clips.jsonl"
    assert svd_core.cli.main(["annotate", str(folder), "-o", str(manifest), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "annotated 4 of 6 videos" in out
    assert "broken.mp4" in err and "short.mp4" in err
    sources = {Path(s.path).name: s for s in read_manifest(manifest)}
    assert sorted(sources) == ["a.mp4", "b.webm", "c.gif", "d"]
    for source in sources.values():
        assert source.fps is not None and 0 <= source.motion_bucket_id <= 255
        assert source.motion_score >= 0
    clips = VideoClips.from_manifest(manifest, num_frames=4, height=64, width=64)
    assert clips[0].motion_bucket_id == sources["a.mp4"].motion_bucket_id
    strict = ["annotate", str(folder), "-o", str(tmp_path / "s.jsonl"), "--quiet", "--strict"]
    assert svd_core.cli.main(strict) == 2
    assert "broken.mp4" in capsys.readouterr().err and not (tmp_path / "s.jsonl").exists()
    assert svd_core.cli.main(["annotate", str(folder), "-o", str(tmp_path / "x.txt")]) == 2
