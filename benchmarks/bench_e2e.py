"""Image to video end to end: seconds and peak memory per process, svd_core against diffusers.

    python benchmarks/bench_e2e.py [--runs 3] [--warmup 1] [--threads 2] [--steps 3]
                                   [--variants diffusers svd_core svd_core-low-memory
                                               svd_core-low-memory-batched]
                                   [--size 256] [--frames 14] [--decode-chunk 14]
                                   [--cache DIR] [--preset svd_xt]

Each variant in its own fresh process: load the random full-size float32 checkpoint of
make_weights.py (written first if missing), make one video from one synthetic image, float32:

- diffusers: `StableVideoDiffusionPipeline.from_pretrained(<cache>/<preset>/diffusers)`, then
  `pipe(image, height=S, width=S, num_frames=F, num_inference_steps=N, decode_chunk_size=C, ...)`;
- svd_core: `svd_core.load(<cache>/<preset>/<preset>_fp32.safetensors)` (the official file), then
  `SVDPipeline(model)(image, ...)`, guidance branches batched (2 videos per UNet call, as diffusers);
- svd_core-low-memory: `svd_core.load(..., low_memory=True)`: one network in memory at a time,
  each read from the memory-mapped file just before it runs and freed after, and (its default) the
  two guidance branches one after the other;
- svd_core-low-memory-batched: the same with the branches batched, to separate the two savings.

Both libraries get the same settings: fps 7 (fps_id 6), motion bucket 127, noise augmentation
0.02, guidance 1.0 -> 3.0 over the frames (diffusers' defaults; svd_xt's official 1.5 -> 3.0 costs
the same), seed 0; svd_core with numerics="diffusers" (diffusers' CLIP preprocessing, schedule and
guidance arithmetic: the same amount of work, comparable frames). Measured: load_s, generate_s
(the call), total_s, the process's peak resident memory (imports, weights, activations), and max
|frames_svd_core - frames_diffusers| over the float frames in [0, 1]. Target (issue 9): svd_core's
peak at most 0.6 of diffusers' (measured there: about 13.2 GiB and 320 s for diffusers at 256x256,
14 frames, 3 steps, decode chunk 14).
Results: benchmarks/results/<machine>-<date>.json (key "e2e"), table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `svd_core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.make_weights import (  # noqa: E402
    DEFAULT_CACHE,
    PRESETS,
    diffusers_path,
    make_weights,
    official_path,
)

VARIANTS = ("diffusers", "svd_core", "svd_core-low-memory", "svd_core-low-memory-batched")
DEFAULT_VARIANTS = VARIANTS[:3]
SECTION = "e2e"
TARGET_RATIO = 0.6  # issue 9: svd_core's peak resident memory at most 0.6x diffusers'
# The same conditioning for both libraries (diffusers' defaults).
SETTINGS = {"fps": 7, "motion_bucket_id": 127, "cond_aug": 0.02, "min_guidance": 1.0}
SETTINGS["max_guidance"] = 3.0


def make_image(size: int, seed: int = 0):
    """A deterministic RGB PIL image, size x size: colour ramps plus seeded noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    ramp = np.stack([xx * 200 // size, yy * 200 // size, (xx + yy) * 100 // size], -1)
    return Image.fromarray((ramp + rng.integers(0, 50, (size, size, 3))).astype(np.uint8))


# ---- the measurement (runs in a fresh process, through common.run_in_subprocess) ---------------


def import_library(variant: str) -> None:
    """Import the library of `variant` completely (diffusers imports its modules lazily)."""
    if variant == "diffusers":
        import diffusers

        diffusers.StableVideoDiffusionPipeline  # noqa: B018
    else:
        import svd_core  # noqa: F401


def diffusers_pipeline(source: str, **from_pretrained):
    """diffusers' SVD pipeline from `source` (`from_pretrained` keywords), progress bar off.

    diffusers resizes the CLIP input to 224 always; at another CLIP input size (only the tiny test
    preset) its resize is patched to that size. Also used by bench_gpu.py.
    """
    import diffusers
    import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion as module

    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(source, **from_pretrained)
    pipe.set_progress_bar_config(disable=True)
    clip_size = pipe.image_encoder.config.image_size
    if clip_size != 224:
        resize = module._resize_with_antialiasing
        module._resize_with_antialiasing = lambda x, _, **kw: resize(
            x, (clip_size, clip_size), **kw
        )
    return pipe


def diffusers_frames(pipe, image, height, width, frames, steps, chunk, seed, output_type):
    """One video of `pipe` with SETTINGS' conditioning: its frames in `output_type` ("pt":
    (F, 3, H, W), "np": (F, H, W, 3), in [0, 1])."""
    import torch

    result = pipe(
        image,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        min_guidance_scale=SETTINGS["min_guidance"],
        max_guidance_scale=SETTINGS["max_guidance"],
        fps=SETTINGS["fps"],  # diffusers conditions on fps - 1, as svd_core does
        motion_bucket_id=SETTINGS["motion_bucket_id"],
        noise_aug_strength=SETTINGS["cond_aug"],
        decode_chunk_size=chunk,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
    )
    return result.frames[0]


def _diffusers_video(source: str, image, size, frames, steps, chunk, seed):
    """Load diffusers' pipeline; return the generate function -> (F, 3, H, W) in [0, 1]."""
    import torch

    pipe = diffusers_pipeline(source, torch_dtype=torch.float32)

    def generate() -> torch.Tensor:
        return diffusers_frames(pipe, image, size, size, frames, steps, chunk, seed, "pt")

    return generate


def _svd_core_video(source: str, image, size, frames, steps, chunk, seed, variant):
    import svd_core

    model = svd_core.load(source, low_memory=variant != "svd_core")
    pipe = svd_core.SVDPipeline(model)
    batch_guidance = None if variant == "svd_core-low-memory" else True  # None: sequential here

    def generate():
        video = pipe(
            image,
            num_frames=frames,
            num_steps=steps,
            height=size,
            width=size,
            decode_chunk_size=chunk,
            seed=seed,
            numerics="diffusers",
            batch_guidance=batch_guidance,
            progress=False,
            **SETTINGS,
        )
        return video.float_frames  # (F, 3, H, W) in [0, 1]

    return generate


def measure(
    variant: str,
    source: str,
    size: int = 256,
    frames: int = 14,
    steps: int = 3,
    decode_chunk: int = 14,
    seed: int = 0,
    output: str | None = None,
) -> dict:
    """Load with `variant` from `source`, make one video; times, and the frames to `output`.

    Returns load_s, generate_s, total_s and peak_after_load_bytes; the harness adds peak_rss_bytes.
    """
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    image = make_image(size, seed)
    import_library(variant)  # import time is not load time
    start = time.perf_counter()
    if variant == "diffusers":
        generate = _diffusers_video(source, image, size, frames, steps, decode_chunk, seed)
    else:
        generate = _svd_core_video(source, image, size, frames, steps, decode_chunk, seed, variant)
    loaded = time.perf_counter()
    peak_after_load = common.peak_rss_bytes()
    with torch.no_grad():
        video = generate()
    done = time.perf_counter()
    if output is not None:
        torch.save(video.float().cpu().contiguous(), output)
    return {
        "load_s": loaded - start,
        "generate_s": done - loaded,
        "total_s": done - start,
        "peak_after_load_bytes": peak_after_load,
    }


# ---- the run -----------------------------------------------------------------------------------


def measure_kwargs(variant: str, args: argparse.Namespace, output: str | None) -> dict:
    """measure's arguments for one variant."""
    if variant == "diffusers":
        source = str(diffusers_path(args.cache, args.preset))
    else:
        source = str(official_path(args.cache, args.preset, "float32"))
    return {
        "variant": variant,
        "source": source,
        "size": args.size,
        "frames": args.frames,
        "steps": args.steps,
        "decode_chunk": args.decode_chunk,
        "seed": args.seed,
        "output": output,
    }


def row_command(args: argparse.Namespace, variant: str) -> str:
    """The command that measures one row again (with diffusers, for the ratios)."""
    variants = "diffusers" if variant == "diffusers" else f"diffusers {variant}"
    parts = ["python benchmarks/bench_e2e.py", f"--variants {variants}"]
    defaults = {"runs": 3, "warmup": 1, "threads": 2, "steps": 3, "size": 256, "frames": 14}
    defaults.update(decode_chunk=14, preset="svd_xt", seed=0)
    for name, default in defaults.items():
        if getattr(args, name) != default:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    return " ".join(parts)


def run(args: argparse.Namespace, log=print) -> dict:
    """Measure every requested variant; return {variant: row}, with ratios to diffusers'."""
    make_weights(args.cache, args.preset, ("float32",), log=log)
    target = "benchmarks.bench_e2e:measure"
    rows = {}
    with tempfile.TemporaryDirectory(prefix="svd_core_bench_") as scratch:
        outputs = {}
        for variant in args.variants:
            outputs[variant] = str(Path(scratch) / f"{variant}.pt")
            kwargs = measure_kwargs(variant, args, outputs[variant])
            measured = common.repeat(
                target, kwargs, args.runs, args.warmup, args.threads, timeout=7200
            )
            row = {**measured["median"], "runs": measured["runs"], "variant": variant}
            row.update(command=row_command(args, variant), warmup=args.warmup)
            rows[variant] = row
            log(
                f"{variant:28s}: load {row['load_s']:.1f} s, generate {row['generate_s']:.1f} s, "
                f"peak {row['peak_rss_bytes'] / 2**30:.2f} GiB"
            )
        if "diffusers" in rows:
            import torch

            reference = torch.load(outputs["diffusers"]).double()
            theirs = rows["diffusers"]
            for variant, row in rows.items():
                frames = torch.load(outputs[variant]).double()
                row["max_abs_error"] = float((frames - reference).abs().max())
                row["ratio_peak_rss"] = row["peak_rss_bytes"] / theirs["peak_rss_bytes"]
                row["ratio_total_s"] = row["total_s"] / theirs["total_s"]
                row["ratio_generate_s"] = row["generate_s"] / theirs["generate_s"]
    return rows


def render(data: dict) -> str:
    """The README section: one row per variant, ratios to diffusers in the same run."""
    gib = 2**30
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows = sorted(data["rows"].values(), key=lambda r: order.get(r["variant"], 9))

    def ratio(row, key):
        return row.get(key, "-")

    table = common.markdown_table(
        ["variant", "load s", "generate s", "total s", "peak RSS GiB", "peak / diffusers'",
         "total s / diffusers'", "max abs error vs diffusers", "command"],
        [
            [r["variant"], r["load_s"], r["generate_s"], r["total_s"], r["peak_rss_bytes"] / gib,
             ratio(r, "ratio_peak_rss"), ratio(r, "ratio_total_s"), ratio(r, "max_abs_error"),
             f"`{r['command']}`"]
            for r in rows
        ],
    )  # fmt: skip
    machine = data["machine"]
    loads = [run["load_average"] for r in rows for run in r["runs"] if "load_average" in run]
    busy = f", 1-minute load average {min(loads):.1f} to {max(loads):.1f}" if loads else ""
    return "\n".join(
        [
            f"Measured {data['date']} on {machine['cpu']} ({machine['usable_cores']} cores, "
            f"{machine['memory_gib']} GiB), torch {machine['packages']['torch']}, diffusers "
            f"{machine['packages']['diffusers']}, {machine['threads']} thread(s){busy}; preset "
            f"{data['preset']}, random weights, float32, {data['size']}x{data['size']}, "
            f"{data['frames']} frames, {data['steps']} steps, decode chunk {data['decode_chunk']}; "
            "each row the median over fresh processes (3 after 1 warm-up unless the command says "
            "otherwise), warm page cache. Peak: the process's resident high-water mark. Ratios "
            "and errors: against diffusers measured by the same command. Target: "
            f"svd_core's peak at most {TARGET_RATIO} of diffusers'.",
            "",
            table,
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="video side, a multiple of 64")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--decode-chunk", type=int, default=14, help="frames decoded at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--preset", default="svd_xt", choices=PRESETS)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        parser.error(
            f"need --runs >= 1, --warmup >= 0 and --threads >= 1, "
            f"got {args.runs}, {args.warmup} and {args.threads}"
        )
    if args.size < 64 or args.size % 64 or min(args.frames, args.steps, args.decode_chunk) < 1:
        parser.error(
            f"need --size a multiple of 64 and --frames, --steps, --decode-chunk >= 1, got "
            f"{args.size}, {args.frames}, {args.steps}, {args.decode_chunk}"
        )
    if args.render_only:
        return common.render_only(parser, SECTION, render, args)

    measured = run(args, log=functools.partial(print, flush=True))
    machine, date = common.machine_info(args.threads), common.today()
    path = common.results_path(machine, args.results_dir, args.machine, date)
    previous = common.read_results(path).get(SECTION, {})
    settings = {"preset": args.preset, "size": args.size, "frames": args.frames}
    settings.update(steps=args.steps, decode_chunk=args.decode_chunk)
    if any(previous.get(key) != value for key, value in settings.items()):
        previous = {}  # rows of other settings do not belong in the same table
    data = {**settings, "target_ratio_peak_rss": TARGET_RATIO}
    data["rows"] = {**previous.get("rows", {}), **measured}
    return common.publish(
        SECTION, data, render, machine, date, args.results_dir, args.machine, args.readme
    )


if __name__ == "__main__":
    main()
