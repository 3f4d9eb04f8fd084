"""Video files as training clips: a folder of videos, folders of frames, or a manifest.

    clips = VideoClips.from_folder("my_videos/", num_frames=14, height=320, width=512, target_fps=7)
    clip = clips[i]          # VideoClip: frames (F, 3, H, W) in [-1, 1], fps, motion_bucket_id, ...
    clips.skipped            # {path: reason} for every file that could not give a clip

Decoding is PyAV's (the `av` package: FFmpeg's libraries, shipped inside its wheels, so no system
FFmpeg is needed; it seeks by timestamp and decodes only from the keyframe before a clip to its
last frame). torchcodec needs a system FFmpeg and decord has no current wheels, which is why PyAV.
It is an optional dependency: `pip install "svd-core[video]"`.

A clip is `num_frames` frames taken every `frame_stride` frames of the source (or at the stride
that comes closest to `target_fps`), resized so that it covers (height, width) and cropped to it:
the centre (`crop="center"`) or a random box (`crop="random"`). Its fps is the source's fps divided
by the stride: what the model is conditioned on (fps_id = fps - 1). Clip i is a pure function of
(dataset, i, seed): the start frame and the crop come from a generator seeded with (seed, i), so
resuming and sharding give the same clips.

Bad sources never crash a run and never give a partial clip. A file that cannot be opened, has no
video stream, or is shorter than one clip is found when the dataset is built and left out, with
its reason in `skipped`; one that fails while decoding is found when its clip is read, and the
next source in order gives the clip instead (still a pure function of the index), counted in
`skipped` too. `strict=True` raises VideoError at the first bad source instead.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io import check_video_size

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi", ".m4v")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FRAMES_FOLDER_FPS = 7.0  # the frame rate of a folder of frames whose manifest entry gives none
MANIFEST_FIELDS = ("path", "fps", "motion_bucket_id", "motion_score", "start", "end", "split")
CROPS = ("center", "random")


class VideoError(ValueError):
    """A video source that cannot give a clip (unreadable, no video stream, too short, corrupt)."""


@dataclass(frozen=True)
class VideoSource:
    """One video file or folder of frames, and what a manifest says about it.

    fps: overrides the container's frame rate (needed for frame folders); motion_bucket_id: the
    clip's motion conditioning (None: the dataset's default); motion_score: the optical-flow score
    it was bucketed from (kept so that clips can be re-bucketed without measuring again); start,
    end: the part to use, in seconds; split: a free label ("train", "val", ...).
    """

    path: str
    fps: float | None = None
    motion_bucket_id: float | None = None
    motion_score: float | None = None  # what `svd-core annotate` measured (svd_core.data.motion)
    start: float | None = None
    end: float | None = None
    split: str | None = None


@dataclass(frozen=True)
class VideoInfo:
    """What a source holds: frames, frame rate, and frame size in pixels."""

    num_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True)
class VideoClip:
    """One training clip. frames: (F, 3, H, W) float32 in [-1, 1]; fps: its frame rate (the
    source's over the stride); motion_bucket_id: from the manifest or the dataset's default;
    source: where it came from; first_frame, stride: which source frames it holds."""

    frames: torch.Tensor
    fps: float
    motion_bucket_id: float
    source: str
    first_frame: int
    stride: int


def _require_av():
    try:
        import av
    except ImportError:
        raise VideoError(
            'reading video files needs PyAV: pip install "svd-core[video]" (or pip install av)'
        ) from None
    return av


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def probe(path: str | os.PathLike, fps: float | None = None) -> VideoInfo:
    """The frames, frame rate and size of a video file or frames folder, from its metadata.

    `fps` overrides the container's rate (a frames folder has none: FRAMES_FOLDER_FPS). A file
    whose stream does not state its frame count is demuxed (packets only, no decoding) to count
    them. Raises VideoError naming the file for anything unreadable.
    """
    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise VideoError(f"{str(path)!r} holds no frames ({', '.join(FRAME_SUFFIXES)})")
        try:
            with Image.open(files[0]) as first:
                width, height = first.size
        except OSError as error:
            raise VideoError(f"cannot read {str(files[0])!r}: {error}") from None
        return VideoInfo(len(files), float(fps or FRAMES_FOLDER_FPS), height, width)
    if not path.is_file():
        raise VideoError(f"{str(path)!r} does not exist")
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            count = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            info = VideoInfo(
                count,
                float(fps or (rate if rate else FRAMES_FOLDER_FPS)),
                stream.height,
                stream.width,
            )
    except (av.FFmpegError, OSError, ValueError, ZeroDivisionError) as error:
        if isinstance(error, VideoError):
            raise
        raise VideoError(f"cannot read {str(path)!r} as a video: {error}") from None
    if info.num_frames < 1 or info.height < 1 or info.width < 1:
        raise VideoError(f"{str(path)!r} has no frames")
    return info


def read_frames(
    path: str | os.PathLike, indices: Sequence[int], fps: float | None = None
) -> np.ndarray:
    """The frames at `indices` (increasing, 0-based) of a video file or frames folder:
    uint8 (N, H, W, 3). Decodes only from the keyframe before the first index to the last one.
    `fps` is used only for a file whose stream states no rate.

    Raises VideoError when a frame cannot be decoded or the source ends before the last index.
    """
    indices = [int(i) for i in indices]
    if not indices or any(b <= a for a, b in zip(indices, indices[1:], strict=False)):
        raise ValueError(f"indices must be increasing and not empty, got {indices[:8]}")
    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)
        if indices[-1] >= len(files):
            raise VideoError(
                f"{str(path)!r} has {len(files)} frames, frame {indices[-1]} asked for"
            )
        try:
            return np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices])
        except OSError as error:
            raise VideoError(f"cannot read a frame of {str(path)!r}: {error}") from None
    av = _require_av()
    wanted = set(indices)
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            # Frame i is the one at i / (the stream's own rate): an `fps` override (a container
            # that states a wrong rate) changes what a clip reports, not which frame is i.
            rate = float(stream.average_rate or stream.guessed_rate or fps or FRAMES_FOLDER_FPS)
            time_base = float(stream.time_base)
            origin = stream.start_time or 0
            if indices[0] > 0 and container.format.name not in ("gif",):  # GIF cannot seek
                target = origin + int(indices[0] / rate / time_base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                index = round((frame.pts - origin) * time_base * rate)
                if index in wanted:
                    found[index] = frame.to_ndarray(format="rgb24")
                if index >= indices[-1]:
                    break
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoError(f"cannot decode {str(path)!r}: {error}") from None
    missing = [i for i in indices if i not in found]
    if missing:
        raise VideoError(
            f"{str(path)!r} ended or skipped before frame {missing[0]} "
            f"({len(missing)} of {len(indices)} frames missing)"
        )
    return np.stack([found[i] for i in indices])


def sources_in(folder: str | os.PathLike) -> list[VideoSource]:
    """Every video file (VIDEO_SUFFIXES) and every folder of frames in `folder`, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(f"{str(folder)!r} is not a folder of videos")
    entries = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in VIDEO_SUFFIXES or (p.is_dir() and _frame_files(p))
    )
    return [VideoSource(str(p)) for p in entries]


def read_manifest(path: str | os.PathLike) -> list[VideoSource]:
    """The sources of a CSV (with a header) or JSONL manifest; relative paths are relative to the
    manifest's folder. Columns: path (required), fps, motion_bucket_id, motion_score, start, end,
    split (MANIFEST_FIELDS)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"manifest {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise VideoError(f"{str(path)!r} line {number} is not JSON: {error}") from None
    else:
        raise VideoError(f"manifest {str(path)!r}: use a .csv or .jsonl file")
    sources = []
    for number, row in enumerate(rows, 1):
        unknown = sorted(set(row) - set(MANIFEST_FIELDS))
        if unknown or not row.get("path"):
            raise VideoError(
                f"{str(path)!r} entry {number}: "
                + (f"unknown columns {unknown}" if unknown else "no path")
                + f"; the columns are {', '.join(MANIFEST_FIELDS)}"
            )
        values = {k: (None if row.get(k) in (None, "") else row[k]) for k in MANIFEST_FIELDS}
        for name in ("fps", "motion_bucket_id", "motion_score", "start", "end"):
            if values[name] is not None:
                try:
                    values[name] = float(values[name])
                except (TypeError, ValueError):
                    raise VideoError(
                        f"{str(path)!r} entry {number}: {name} must be a number, got "
                        f"{values[name]!r}"
                    ) from None
        source_path = Path(values["path"])
        full = source_path if source_path.is_absolute() else path.parent / source_path
        values["path"] = os.path.normpath(full)
        sources.append(VideoSource(**values))
    return sources


def write_manifest(path: str | os.PathLike, sources: Iterable[VideoSource]) -> Path:
    """Write sources as a JSONL manifest (atomically), paths relative to its folder where they can be."""
    from ..io import atomic_file

    path = Path(path)
    lines = []
    for source in sources:
        entry = {k: v for k, v in vars(source).items() if v is not None}
        try:
            entry["path"] = os.path.relpath(source.path, path.parent)
        except ValueError:  # another drive (Windows)
            pass
        lines.append(json.dumps(entry))
    with atomic_file(path, suffix=".jsonl") as temporary:
        Path(temporary).write_text("".join(line + "\n" for line in lines))
    return path


def resize_and_crop(
    frames: torch.Tensor, height: int, width: int, crop: str, generator: torch.Generator
) -> torch.Tensor:
    """(F, 3, h, w) -> (F, 3, height, width): the largest box of the target's aspect ratio (at the
    centre, or placed at random), scaled to the target with antialiased bilinear resampling."""
    in_h, in_w = frames.shape[-2:]
    if in_w * height > in_h * width:  # wider than the target: keep the full height
        box_h, box_w = in_h, max(1, min(in_w, round(in_h * width / height)))
    else:
        box_h, box_w = max(1, min(in_h, round(in_w * height / width))), in_w
    if crop == "center":
        top, left = (in_h - box_h) // 2, (in_w - box_w) // 2
    else:
        top = int(torch.randint(0, in_h - box_h + 1, (), generator=generator))
        left = int(torch.randint(0, in_w - box_w + 1, (), generator=generator))
    box = frames[:, :, top : top + box_h, left : left + box_w]
    if (box_h, box_w) == (height, width):
        return box
    return torch.nn.functional.interpolate(
        box, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


@dataclass
class VideoClips(torch.utils.data.Dataset):
    """Clips of `num_frames` frames at (height, width) from video sources (see the module docstring).

    frame_stride or target_fps (not both; neither: stride 1) sets the frames between a clip's
    frames; height and width are multiples of `size_multiple` (64 for SVD); motion_bucket_id is
    the default for sources without one. `skipped` maps each bad source to its reason.
    """

    sources: Sequence[VideoSource]
    num_frames: int
    height: int
    width: int
    frame_stride: int | None = None
    target_fps: float | None = None
    crop: str = "center"
    motion_bucket_id: float = 127.0
    seed: int = 0
    strict: bool = False
    size_multiple: int = 64
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            isinstance(self.num_frames, bool)
            or not isinstance(self.num_frames, int)
            or self.num_frames < 1
        ):
            raise ValueError(f"num_frames must be a positive integer, got {self.num_frames!r}")
        check_video_size(self.height, self.width, self.size_multiple, " (the training size)")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.frame_stride is not None and self.target_fps is not None:
            raise ValueError("give frame_stride or target_fps, not both")
        if self.frame_stride is not None and (
            not isinstance(self.frame_stride, int) or self.frame_stride < 1
        ):
            raise ValueError(f"frame_stride must be a positive integer, got {self.frame_stride!r}")
        if self.target_fps is not None and not (
            math.isfinite(self.target_fps) and self.target_fps > 0
        ):
            raise ValueError(f"target_fps must be positive, got {self.target_fps!r}")
        usable, self._plans = [], []
        for source in self.sources:
            try:
                info = probe(source.path, source.fps)
                plan = self._plan(source, info)
            except VideoError as error:
                if self.strict:
                    raise
                self.skipped[source.path] = str(error)
                continue
            usable.append(source)
            self._plans.append(plan)
        self.sources = usable
        if not usable:
            raise VideoError(
                "no source can give a clip of "
                f"{self.num_frames} frames; skipped: {dict(list(self.skipped.items())[:3])}"
            )

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **options) -> VideoClips:
        """Every video file and every folder of frames in `folder` (`sources_in`)."""
        return cls(sources_in(folder), **options)

    @classmethod
    def from_manifest(
        cls, manifest: str | os.PathLike, split: str | None = None, **options
    ) -> VideoClips:
        """The sources of a CSV or JSONL manifest (`read_manifest`), optionally of one split."""
        sources = read_manifest(manifest)
        if split is not None:
            sources = [s for s in sources if s.split == split]
        return cls(sources, **options)

    def _plan(self, source: VideoSource, info: VideoInfo) -> tuple[int, int, int, float]:
        """(first usable frame, last usable frame + 1, stride, fps) of a source, or VideoError."""
        stride = self.frame_stride or (
            max(1, round(info.fps / self.target_fps)) if self.target_fps else 1
        )
        first = 0 if source.start is None else max(0, math.ceil(source.start * info.fps))
        end = (
            info.num_frames
            if source.end is None
            else min(info.num_frames, int(source.end * info.fps))
        )
        needed = (self.num_frames - 1) * stride + 1
        if end - first < needed:
            raise VideoError(
                f"{source.path!r} is too short: {max(0, end - first)} usable frames, a clip of "
                f"{self.num_frames} frames at stride {stride} needs {needed}"
            )
        return first, end, stride, info.fps / stride

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> VideoClip:
        return self.clip(index)

    def clip(self, index: int) -> VideoClip:
        """Clip `index`; a source that fails to decode passes to the next one (see the module
        docstring), unless strict."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} of a dataset of {len(self)} sources")
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            source = self.sources[position]
            try:
                return self._read(position, index)
            except VideoError as error:
                if self.strict:
                    raise
                self.skipped[source.path] = str(error)
        raise VideoError(
            f"no source could be decoded; skipped: {dict(list(self.skipped.items())[:3])}"
        )

    def _read(self, position: int, index: int) -> VideoClip:
        source = self.sources[position]
        first, end, stride, fps = self._plans[position]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        span = (self.num_frames - 1) * stride + 1
        start = first + int(torch.randint(0, end - first - span + 1, (), generator=generator))
        indices = range(start, start + span, stride)
        pixels = read_frames(source.path, indices, source.fps)  # (F, h, w, 3) uint8
        frames = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        frames = resize_and_crop(frames, self.height, self.width, self.crop, generator)
        bucket = (
            self.motion_bucket_id if source.motion_bucket_id is None else source.motion_bucket_id
        )
        return VideoClip(
            frames.clamp(-1, 1).contiguous(), fps, float(bucket), source.path, start, stride
        )
