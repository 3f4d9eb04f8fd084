"""Many images to many videos, sharded over the processes that torchrun starts (`generate-batch`).

Input i of the sorted input list is generated with seed `base_seed + i` by rank i mod W of W
processes, so the videos do not depend on the world size (one process gives the same files as eight).
Every rank loads its own model; ranks never talk while generating, so the run scales linearly.

Resuming: each finished video is written atomically, then a record (input, output, seed, the
settings it was made with, the settings requested, model, frames, seconds) is appended to
OUT_DIR/manifest-rank{r}.jsonl (made with the first record, so a run that fails before any video
leaves none). A later run skips an input whose output exists and whose latest record has the same
seed, requested settings and model; any other output is (re)generated. At the end rank 0 merges
every rank file into OUT_DIR/manifest.json, one entry per input in input order, each saying
whether this run generated or skipped it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import distributed
from .io import atomic_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FORMATS = {"mp4": ".mp4", "gif": ".gif", "webp": ".webp", "png": ""}  # png: a folder of frames
MANIFEST_NAME = "manifest.json"
# BatchSettings fields that SVDPipeline.__call__ lacks
BATCH_ONLY = ("dtype", "base_seed", "format")


class BatchError(ValueError):
    """An input list, output folder or setting that generate-batch cannot work with."""


@dataclass(frozen=True)
class BatchSettings:
    """What decides a video besides its image and seed; None = the model's / pipeline's default."""

    num_frames: int | None = None
    num_steps: int | None = None
    fps: float | None = None
    motion_bucket_id: float | None = None
    cond_aug: float | None = None
    min_guidance: float | None = None
    max_guidance: float | None = None
    decode_chunk_size: int | None = None
    height: int | None = None
    width: int | None = None
    resize: str = "crop"
    sampler: str = "euler"
    dtype: str = "float32"  # UNet and image encoder dtype
    base_seed: int = 0  # input i (in sorted order) is generated with seed base_seed + i
    format: str = "mp4"  # mp4, gif, webp, or png (a folder of PNG frames per video)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise BatchError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if isinstance(self.base_seed, bool) or not isinstance(self.base_seed, int):
            raise BatchError(f"base_seed must be an integer, got {self.base_seed!r}")
        if self.base_seed < 0:
            raise BatchError(f"base_seed must be >= 0, got {self.base_seed}")

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of SVDPipeline.__call__ these settings stand for (seed aside):
        every field but the ones that are the batch's own."""
        return {k: v for k, v in asdict(self).items() if k not in BATCH_ONLY}

    def recorded(self) -> dict[str, Any]:
        """The settings as the manifest stores them (base_seed aside: each video has its seed)."""
        return {k: v for k, v in asdict(self).items() if k != "base_seed"}


def list_inputs(source: str | Path) -> list[Path]:
    """The input images: a folder's png/jpg/jpeg/webp files (sorted by name) or a text file's paths.

    A list file holds one path per line (relative paths are relative to the list file's folder;
    blank lines and lines starting with # are skipped) and keeps its order. Two inputs with the same
    file stem would write the same output, so they are an error.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise BatchError(
                f"no images in {str(source)!r}; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
            )
    elif source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        paths = [
            p if p.is_absolute() else source.parent / p
            for p in (Path(line) for line in lines if line and not line.startswith("#"))
        ]
        if not paths:
            raise BatchError(f"the list {str(source)!r} names no images (one path per line)")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise BatchError(
                f"the list {str(source)!r} names {len(missing)} missing file(s): "
                + ", ".join(repr(m) for m in missing[:5])
            )
    else:
        raise BatchError(
            f"{str(source)!r} does not exist; give a folder of images or a text file of image paths"
        )
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise BatchError(
                f"{str(seen[path.stem])!r} and {str(path)!r} would both write the output "
                f"{path.stem!r}; rename one"
            )
        seen[path.stem] = path
    return paths


def output_name(image: Path, settings: BatchSettings) -> str:
    """The output of one input, inside OUT_DIR: its stem + the format's suffix (png: a folder)."""
    return image.stem + FORMATS[settings.format]


def read_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest record per output name over every manifest-rank*.jsonl in out_dir (any world size).

    A line cut short by a crash (the only line that can be) is ignored.
    """
    latest: dict[str, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("manifest-rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = record.get("output")
            if name is not None and record.get("finished", 0) >= latest.get(name, {}).get(
                "finished", -1
            ):
                latest[name] = record
    return latest


def resolved(metadata: dict[str, Any]) -> dict[str, Any]:
    """The settings of a video's metadata (SVDPipeline's resolved values), without its seed and
    version: what the manifest records as the settings each video was made with."""
    return {k: v for k, v in metadata.items() if k not in ("seed", "svd_core", "model")}


def _is_done(out_dir: Path, name: str, record: dict | None, wanted: dict[str, Any]) -> bool:
    """True when the output exists and its record says it was made with the wanted seed/settings."""
    if record is None or not (out_dir / name).exists():
        return False
    return all(record.get(key) == value for key, value in wanted.items())


def generate_batch(
    inputs: Sequence[Path],
    out_dir: str | Path,
    settings: BatchSettings,
    make_pipeline: Callable[[], Any],
    model_source: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate this rank's share of `inputs` into out_dir; rank 0 then writes manifest.json.

    make_pipeline() returns an SVDPipeline; it is called once, and only if this rank has work.
    Returns the merged manifest (on every rank): {"model", "settings" (resolved: the model's
    defaults filled in), "requested" (as given: None for a default), "base_seed", "world_size",
    "videos"}. A new out_dir that no video reached is removed again if the run fails.
    """
    current = distributed.world()
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_records(out_dir)
    distributed.barrier(current)  # every rank has read the old records before anyone appends
    pipe = None
    statuses: dict[str, str] = {}
    manifest_path = out_dir / f"manifest-rank{current.rank}.jsonl"
    mine = distributed.shard(list(inputs), current)
    try:
        for done, (index, image) in enumerate(mine):
            name = output_name(image, settings)
            seed = settings.base_seed + index
            wanted = {"seed": seed, "requested": settings.recorded(), "model": model_source}
            if _is_done(out_dir, name, records.get(name), wanted):
                statuses[name] = "skipped"
                continue
            if pipe is None:
                pipe = make_pipeline()
            began = time.perf_counter()
            video = pipe(image, seed=seed, progress=False, **settings.pipeline_arguments())
            target = out_dir / name
            if target.is_dir():  # an unlisted PNG folder (e.g. other settings): replaced
                shutil.rmtree(target)
            video.save(target)  # atomic, with the seed and the resolved settings inside
            record = {
                "input": str(image),
                "output": name,
                "index": index,
                "seed": seed,
                # what the run used (the model's defaults filled in) and what was asked for (None:
                # the model's default), which decides whether a later run may skip this video
                "settings": {**resolved(video.metadata), "dtype": settings.dtype},
                "requested": settings.recorded(),
                "model": model_source,
                "frames": len(video),
                "fps": video.fps,
                "seconds": round(time.perf_counter() - began, 3),
                "rank": current.rank,
                "world_size": current.world_size,
                "finished": time.time(),
            }
            with open(manifest_path, "a") as manifest:  # opened once there is a record to keep
                manifest.write(json.dumps(record) + "\n")
            statuses[name] = "generated"
            if progress:
                print(
                    f"[rank {current.rank}] {done + 1}/{len(mine)} {name} "
                    f"(seed {seed}, {record['seconds']:.1f} s)",
                    flush=True,
                )
    except BaseException:
        if created and not any(out_dir.iterdir()):  # a failed start leaves no empty folder
            out_dir.rmdir()
        raise
    all_statuses: dict[str, str] = {}
    for part in distributed.gather_objects(statuses, current):
        all_statuses.update(part)
    records = read_records(out_dir)
    videos = [
        {**records[name], "status": all_statuses[name]}
        for name in (output_name(image, settings) for image in inputs)
    ]
    merged = {
        "model": model_source,
        "settings": videos[0]["settings"],  # the same for every video: one model, one request
        "requested": settings.recorded(),
        "base_seed": settings.base_seed,
        "world_size": current.world_size,
        "videos": videos,
    }
    if current.is_main:
        with atomic_file(out_dir / MANIFEST_NAME, suffix=".json") as temporary:
            Path(temporary).write_text(json.dumps(merged, indent=2) + "\n")
    distributed.barrier(current)
    return merged
