"""Image to video on a GPU: seconds per video and peak GPU memory, svd_core against diffusers,
eager and compiled, in float16 and bfloat16.

    python benchmarks/bench_gpu.py   # svd_xt, 576x1024, 25 frames, 25 steps: 8 variants, 3 runs
    python benchmarks/bench_gpu.py --dtypes float16 --modes eager --runs 1 --warmup 0
        [--libraries diffusers svd_core] [--modes eager compiled] [--dtypes float16 bfloat16]
        [--device cuda] [--height 576] [--width 1024] [--frames 25] [--steps 25]
        [--decode-chunk 8] [--warmup-videos 1] [--compile-mode default]
        [--compile-backend inductor] [--threads 4] [--seed 0] [--cache DIR] [--preset svd_xt]
    python benchmarks/bench_gpu.py --render-only results/<machine>-<date>.json

A variant is a library (svd_core, diffusers), a dtype (float16, bfloat16; float32 on request) and a
mode (eager, compiled). Each run of a variant is its own fresh process (common.run_in_subprocess;
--warmup discarded processes, then --runs measured ones, the median of every number), which:

1. loads the random full-size checkpoint of make_weights.py (written first if missing) to the
   device: svd_core `svd_core.load(<cache>/<preset>/<preset>_fp16.safetensors, dtype, device)`
   (the official single file) and `SVDPipeline(model)`; diffusers
   `StableVideoDiffusionPipeline.from_pretrained(<cache>/<preset>/diffusers, torch_dtype=dtype,
   variant="fp16").to(device)`. float16 and bfloat16 both read the float16 files (bfloat16: converted
   while loading, the same way in both libraries, so both hold the same bfloat16 weights); float32
   reads the float32 files. `load s` is this step, up to a device synchronize;
2. compiled mode: the UNet, where nearly all the time goes, is compiled the same way in both:
   svd_core `model.unet = torch.compile(model.unet, mode=..., backend=...)`, diffusers
   `pipe.unet = torch.compile(pipe.unet, mode=..., backend=...)`;
3. makes --warmup-videos untimed videos (default 1, in both modes: compilation happens in the first
   one, and an eager process pays its first-call costs there: CUDA context, cuBLAS and cuDNN
   handles, kernel loading). `compile s` is the first video's seconds minus the timed video's;
4. makes one timed video, with torch.cuda.synchronize() before and after (none on CPU), the
   peak GPU memory counters reset just before it: `torch.cuda.max_memory_allocated` (the weights
   included: they stay allocated) and `max_memory_reserved` (what the caching allocator held).
   For a compiled UNet the number of graphs compiled during the timed video is recorded too (0
   expected: a recompilation there would be in the time).

Same work and inputs on both sides: one seeded RGB image already at the video's size (no resize on
either side), the settings of bench_e2e.py (fps 7, i.e. fps_id 6: diffusers takes fps and subtracts
1, as svd_core does; motion bucket 127, noise augmentation 0.02, guidance 1.0 -> 3.0 over the
frames, seed 0 through a CPU generator, which both draw from in the same order), the same decode
chunk (--decode-chunk, default 8, passed to both pipelines), svd_core with numerics="diffusers"
(diffusers' CLIP preprocessing, schedule and guidance arithmetic). Precision follows diffusers':
every network in the dtype, the VAE included (diffusers upcasts the VAE to float32 only to encode
the conditioning image, and only in float16; svd_core encodes that one image in the dtype: a
negligible difference in work), so svd_core's SVDPipeline gets no dtype argument and runs the
model as loaded (`SVDPipeline(model, dtype=...)`, our recommended half-precision path,
would keep the VAE in float32: more work, not measured here). Both return the frames on the CPU:
svd_core's `Video` (float and uint8 frames), diffusers' `output_type="np"`, so the device-to-host
copy is in both times. Diffusers' res-block GroupNorm eps is set to the official 1e-5 (its own
1e-6 in some blocks, /work/shared/DESIGN.md; as bench_unet.py does): no change in work, and the two
pipelines then compute the same function, so `max abs err vs diffusers` (max |frames_svd_core -
frames_diffusers| over the float frames in [0, 1], same dtype and mode) shows dtype round-off and
nothing else; a speed-up never hides a numeric change.

Compile mode: "default" (inductor's fused kernels, no CUDA graphs, no autotuning: the shortest
compilation); "max-autotune-no-cudagraphs" also benchmarks kernel choices for every matmul and
convolution shape (a much longer first video), "reduce-overhead" adds CUDA graphs (their memory,
against a launch overhead that kernels of this size hardly have). Pass one with
--compile-mode; it goes to both libraries. Backends other than inductor get no mode ("eager" and
"aot_eager" exercise the compiled path without code generation). The CPU test runs "eager" with
dynamo disabled (TORCH_COMPILE_DISABLE=1) to keep the suite short: tracing both tiny pipelines
costs tens of seconds of this machine's CPU (tests/test_compile.py covers svd_core's graphs).

Target (issue 9): svd_core faster than diffusers at equal settings (dtype and mode). The last column
compares with the TensorRT figure Stability published for svd_xt on an H100: about 22.6 s for 25
frames at 576x1024 (the figure issue 9 quotes), at those settings only.

Results: benchmarks/results/<machine>-<date>.json (key "gpu"; <machine> from the GPU's name on
CUDA), rows merged with earlier runs of the same settings (one call may measure only some
variants), and the table in benchmarks/README.md between the gpu markers.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `svd_core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.bench_e2e import (  # noqa: E402  (the same conditioning and diffusers calls)
    SETTINGS,
    diffusers_frames,
    diffusers_pipeline,
    import_library,
)
from benchmarks.make_weights import (  # noqa: E402
    DEFAULT_CACHE,
    PRESETS,
    diffusers_path,
    make_weights,
    official_path,
)

LIBRARIES = ("diffusers", "svd_core")
DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_DTYPES = ("float16", "bfloat16")
MODES = ("eager", "compiled")
SECTION = "gpu"
# Stability AI's published TensorRT time for svd_xt on one H100, 25 frames at 576x1024 (issue 9).
TENSORRT_H100_S = 22.6
TENSORRT_SETTINGS = {"preset": "svd_xt", "height": 576, "width": 1024, "frames": 25}
DEFAULTS = {"runs": 3, "warmup": 1, "threads": 4, "device": "cuda", "height": 576, "width": 1024}
DEFAULTS.update(frames=25, steps=25, decode_chunk=8, warmup_videos=1, compile_mode="default")
DEFAULTS.update(compile_backend="inductor", preset="svd_xt", seed=0)
GIB = 2**30


def variant_name(library: str, dtype: str, mode: str) -> str:
    """A row's key, e.g. "svd_core-float16-compiled"."""
    return f"{library}-{dtype}-{mode}"


def weight_dtype(dtype: str) -> str:
    """The make_weights files a dtype is loaded from: float16 for both half dtypes."""
    return "float32" if dtype == "float32" else "float16"


def make_image(height: int, width: int, seed: int = 0):
    """A deterministic RGB PIL image, height x width: colour ramps plus seeded noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = np.stack([xx * 200 // width, yy * 200 // height, (xx + yy) * 100 // (height + width)])
    noisy = ramp.transpose(1, 2, 0) + rng.integers(0, 50, (height, width, 3))
    return Image.fromarray(noisy.astype(np.uint8))


# ---- the measurement (runs in a fresh process, through common.run_in_subprocess) ---------------


def _synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _svd_core_pipeline(source, dtype, device, image, height, width, frames, steps, chunk, seed):
    """Load svd_core to `device`; return (generate function -> frames (F, 3, H, W), compile
    function taking torch.compile's options)."""
    import torch

    import svd_core

    model = svd_core.load(source, dtype=dtype, device=device)
    pipe = svd_core.SVDPipeline(model)  # no dtype: every network in `dtype`, as diffusers runs them

    def generate() -> torch.Tensor:
        video = pipe(
            image,
            num_frames=frames,
            num_steps=steps,
            height=height,
            width=width,
            decode_chunk_size=chunk,
            seed=seed,
            numerics="diffusers",
            progress=False,
            **SETTINGS,
        )
        return video.float_frames  # (F, 3, H, W) in [0, 1], on the CPU

    def compile_unet(**options) -> None:
        model.unet = torch.compile(model.unet, **options)

    return generate, compile_unet


def _diffusers_pipeline(
    source, dtype, device, image, height, width, frames, steps, chunk, seed, preset
):
    """Load diffusers' pipeline to `device`, its res-block eps set to the official value; return
    (generate function -> frames (F, 3, H, W), compile function)."""
    import torch
    from diffusers.models.resnet import SpatioTemporalResBlock

    from svd_core import SVDConfig

    variant = None if dtype == torch.float32 else "fp16"
    pipe = diffusers_pipeline(source, torch_dtype=dtype, variant=variant).to(device)
    eps = getattr(SVDConfig, preset)().unet.norm_eps  # official 1e-5 (diffusers: 1e-6 in some)
    for block in pipe.unet.modules():
        if isinstance(block, SpatioTemporalResBlock):
            for res_block in (block.spatial_res_block, block.temporal_res_block):
                res_block.norm1.eps = res_block.norm2.eps = eps

    def generate() -> torch.Tensor:
        # "np": on the CPU, as svd_core's Video; (F, H, W, 3) -> (F, 3, H, W)
        video = diffusers_frames(pipe, image, height, width, frames, steps, chunk, seed, "np")
        return torch.from_numpy(video).permute(0, 3, 1, 2)

    def compile_unet(**options) -> None:
        pipe.unet = torch.compile(pipe.unet, **options)

    return generate, compile_unet


def measure(
    library: str,
    dtype: str,
    mode: str,
    source: str,
    device: str = "cuda",
    preset: str = "svd_xt",
    height: int = 576,
    width: int = 1024,
    frames: int = 25,
    steps: int = 25,
    decode_chunk: int = 8,
    seed: int = 0,
    warmup_videos: int = 1,
    compile_mode: str = "default",
    compile_backend: str = "inductor",
    output: str | None = None,
) -> dict:
    """Load `library`'s pipeline from `source` to `device` in `dtype`, compile its UNet if `mode`
    is "compiled", make `warmup_videos` untimed videos and one timed; its frames to `output`.

    Returns load_s, warmup_s (the first untimed video's seconds, None without one), video_s,
    gpu_weights_bytes (allocated after loading), gpu_peak_allocated_bytes and
    gpu_peak_reserved_bytes (during the timed video; all three None off CUDA),
    graphs_compiled_in_timed_video (compiled mode; None in eager) and device_name. The harness adds
    peak_rss_bytes.
    """
    import torch

    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "compiled" and warmup_videos < 1:
        raise ValueError(
            f"compiled mode needs warmup_videos >= 1 (compilation happens in the first video), "
            f"got {warmup_videos}"
        )
    device = torch.device(device)
    cuda = device.type == "cuda"
    torch_dtype = getattr(torch, dtype)
    image = make_image(height, width, seed)
    options = (image, height, width, frames, steps, decode_chunk, seed)
    import_library(library)
    _synchronize(device)
    start = time.perf_counter()
    if library == "diffusers":
        generate, compile_unet = _diffusers_pipeline(source, torch_dtype, device, *options, preset)
    else:
        generate, compile_unet = _svd_core_pipeline(source, torch_dtype, device, *options)
    _synchronize(device)
    load_s = time.perf_counter() - start
    weights_bytes = torch.cuda.memory_allocated(device) if cuda else None
    if mode == "compiled":
        compile_options = {"backend": compile_backend}
        if compile_backend == "inductor" and compile_mode != "default":
            compile_options["mode"] = compile_mode  # other backends take no mode
        compile_unet(**compile_options)

    def timed_video() -> tuple[float, torch.Tensor]:
        _synchronize(device)
        begin = time.perf_counter()
        with torch.no_grad():
            video = generate()
        _synchronize(device)
        return time.perf_counter() - begin, video

    warmup_s = [timed_video()[0] for _ in range(warmup_videos)]
    graphs_before = _compiled_graphs() if mode == "compiled" else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    video_s, video = timed_video()
    if output is not None:
        torch.save(video.float().cpu().contiguous(), output)
    return {
        "load_s": load_s,
        "warmup_s": warmup_s[0] if warmup_s else None,
        "video_s": video_s,
        "gpu_weights_bytes": weights_bytes,
        "gpu_peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "gpu_peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "graphs_compiled_in_timed_video": (
            None if graphs_before is None else _compiled_graphs() - graphs_before
        ),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
    }


def _compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


# ---- the run -----------------------------------------------------------------------------------


def measure_kwargs(library: str, dtype: str, mode: str, args, output: str | None) -> dict:
    """measure's arguments for one variant."""
    if library == "diffusers":
        source = diffusers_path(args.cache, args.preset)
    else:
        source = official_path(args.cache, args.preset, weight_dtype(dtype))
    kwargs = {"library": library, "dtype": dtype, "mode": mode, "source": str(source)}
    for name in ("device", "preset", "height", "width", "frames", "steps", "decode_chunk"):
        kwargs[name] = getattr(args, name)
    for name in ("seed", "warmup_videos", "compile_mode", "compile_backend"):
        kwargs[name] = getattr(args, name)
    return {**kwargs, "output": output}


def row_command(args: argparse.Namespace, library: str, dtype: str, mode: str) -> str:
    """The command that measures one row again (svd_core with diffusers, for the ratios)."""
    libraries = "diffusers" if library == "diffusers" else "diffusers svd_core"
    parts = ["python benchmarks/bench_gpu.py", f"--libraries {libraries}"]
    parts += [f"--dtypes {dtype}", f"--modes {mode}"]
    for name, default in DEFAULTS.items():
        if getattr(args, name) != default:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    return " ".join(parts)


def compares_with_tensorrt(settings: dict) -> bool:
    """Whether `settings` are those of Stability's TensorRT figure (svd_xt, 25 frames, 576x1024)."""
    return all(settings.get(key) == value for key, value in TENSORRT_SETTINGS.items())


def run(args: argparse.Namespace, log=print) -> dict:
    """Measure every requested variant; return {variant: row}, svd_core's rows with their ratios
    to and distance from diffusers' of the same dtype and mode."""
    files = tuple(sorted({weight_dtype(dtype) for dtype in args.dtypes}))
    make_weights(args.cache, args.preset, files, log=log)
    target = "benchmarks.bench_gpu:measure"
    rows = {}
    with tempfile.TemporaryDirectory(prefix="svd_core_bench_gpu_") as scratch:
        outputs = {}
        for dtype in args.dtypes:
            for mode in args.modes:
                for library in [lib for lib in LIBRARIES if lib in args.libraries]:
                    name = variant_name(library, dtype, mode)
                    outputs[name] = str(Path(scratch) / f"{name}.pt")
                    kwargs = measure_kwargs(library, dtype, mode, args, outputs[name])
                    measured = common.repeat(
                        target, kwargs, args.runs, args.warmup, args.threads, timeout=3600
                    )
                    row = {**measured["median"], "runs": measured["runs"], "variant": name}
                    row.update(library=library, dtype=dtype, mode=mode, warmup=args.warmup)
                    row["command"] = row_command(args, library, dtype, mode)
                    rows[name] = row
                    log(_summary(row))
        _compare(rows, outputs)
    settings = {key: getattr(args, key) for key in TENSORRT_SETTINGS}
    for row in rows.values():
        if compares_with_tensorrt(settings):
            row["ratio_tensorrt"] = row["video_s"] / TENSORRT_H100_S
    return rows


def _summary(row: dict) -> str:
    memory = row["gpu_peak_allocated_bytes"]
    memory = f"peak GPU {memory / GIB:.2f} GiB" if memory is not None else "no GPU"
    return (
        f"{row['variant']:28s}: load {row['load_s']:.1f} s, video {row['video_s']:.2f} s, "
        f"{memory}, peak RSS {row['peak_rss_bytes'] / GIB:.2f} GiB"
    )


def _compare(rows: dict, outputs: dict) -> None:
    """Add to each svd_core row measured beside diffusers' of the same dtype and mode: the time and
    memory ratios (ours / diffusers') and max |frames - diffusers' frames|."""
    import torch

    for name, row in rows.items():
        theirs = rows.get(variant_name("diffusers", row["dtype"], row["mode"]))
        if row["library"] != "svd_core" or theirs is None:
            continue
        frames = torch.load(outputs[name]).double()
        reference = torch.load(outputs[theirs["variant"]]).double()
        if frames.shape != reference.shape:
            raise common.BenchmarkError(
                f"{name} made frames of shape {tuple(frames.shape)}, diffusers "
                f"{tuple(reference.shape)}: the two did not make the same video"
            )
        row["max_abs_error"] = float((frames - reference).abs().max())
        row["ratio_video_s"] = row["video_s"] / theirs["video_s"]
        row["ratio_peak_rss"] = row["peak_rss_bytes"] / theirs["peak_rss_bytes"]
        if row["gpu_peak_allocated_bytes"] is not None:
            ours, other = row["gpu_peak_allocated_bytes"], theirs["gpu_peak_allocated_bytes"]
            row["ratio_gpu_peak_allocated"] = ours / other


def render(data: dict) -> str:
    """The README section: one row per variant, svd_core's ratios to diffusers' beside them."""
    order = {
        variant_name(lib, dtype, mode): (DTYPES.index(dtype), MODES.index(mode), i)
        for dtype in DTYPES
        for mode in MODES
        for i, lib in enumerate(LIBRARIES)
    }
    rows = sorted(data["rows"].values(), key=lambda r: order.get(r["variant"], (9, 9, 9)))

    def gib(value):
        return "-" if value is None else value / GIB

    def overhead(row):
        warmup = row.get("warmup_s")
        return "-" if warmup is None else warmup - row["video_s"]

    def memory_ratio(row):
        if "ratio_gpu_peak_allocated" in row:
            return row["ratio_gpu_peak_allocated"]
        return f"{row['ratio_peak_rss']:.3g} (RSS)" if "ratio_peak_rss" in row else "-"

    table = common.markdown_table(
        ["variant", "load s", "compile s", "s / video", "peak GPU GiB", "reserved GiB",
         "peak RSS GiB", "time ours / diffusers", "memory ours / diffusers",
         "max abs err vs diffusers", f"s / {TENSORRT_H100_S} s TensorRT", "command"],
        [
            [r["variant"], r["load_s"], overhead(r), r["video_s"],
             gib(r["gpu_peak_allocated_bytes"]), gib(r["gpu_peak_reserved_bytes"]),
             r["peak_rss_bytes"] / GIB, r.get("ratio_video_s", "-"), memory_ratio(r),
             r.get("max_abs_error", "-"), r.get("ratio_tensorrt", "-"), f"`{r['command']}`"]
            for r in rows
        ],
    )  # fmt: skip
    machine, gpu = data["machine"], data.get("gpu")
    device = f"{gpu['name']} ({gpu['memory_gib']} GiB), CUDA {gpu['cuda']}" if gpu else "CPU only"
    recompiled = [r["variant"] for r in rows if r.get("graphs_compiled_in_timed_video")]
    warning = (
        f" Recompiled during the timed video (its time includes compilation): "
        f"{', '.join(recompiled)}."
        if recompiled
        else ""
    )
    compile_options = f"torch.compile backend {data['compile_backend']}"
    if data["compile_backend"] == "inductor":
        compile_options += f", mode {data['compile_mode']}"
    return "\n".join(
        [
            f"Measured {data['date']} on {device}; host {machine['cpu']} "
            f"({machine['usable_cores']} cores), torch {machine['packages']['torch']}, diffusers "
            f"{machine['packages']['diffusers']}, {machine['threads']} CPU thread(s); preset "
            f"{data['preset']}, random weights, {data['height']}x{data['width']}, "
            f"{data['frames']} frames, {data['steps']} steps, decode chunk "
            f"{data['decode_chunk']}; compiled: the UNet, {compile_options}. Each row the median "
            "over fresh processes (3 after 1 warm-up unless the command says otherwise) of one "
            f"timed video after {data['warmup_videos']} untimed one(s) in the same process. "
            "compile s: the first video's seconds minus the timed one's (compilation, or an "
            "eager process's first-call costs). Peak GPU: torch.cuda.max_memory_allocated over the "
            "timed video, weights included; reserved: max_memory_reserved. Ratios and error: "
            "svd_core against diffusers of the same dtype and mode, measured by the same command; "
            "error over the float frames in [0, 1]. TensorRT: Stability's published svd_xt time "
            f"on an H100, {TENSORRT_H100_S} s for 25 frames at 576x1024 (only at those settings). "
            f"Target: svd_core faster than diffusers at equal settings.{warning}",
            "",
            table,
        ]
    )


def gpu_info(device: str) -> dict | None:
    """Name, memory and CUDA version of a CUDA device; None for the CPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    return {
        "name": properties.name,
        "memory_gib": round(properties.total_memory / GIB, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def gpu_slug(gpu: dict) -> str:
    """A file-name-safe machine name from a GPU's name, e.g. `nvidia-h100-80gb-hbm3-gpu`."""
    return re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-") + "-gpu"


def _check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """parser.error (one line, exit code 2) unless `name` is the CPU or a CUDA device present here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device must be cuda, cuda:N or cpu, got {name!r}")
    if device.type == "cpu":
        return
    if device.type != "cuda":
        parser.error(f"--device must be cuda, cuda:N or cpu, got {name!r}")
    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
        parser.error(
            f"--device {name} asked, but this machine has no usable CUDA device (torch "
            f"{torch.__version__}, built with {built}): run it on a machine with an NVIDIA GPU, "
            "or pass --device cpu for a (slow) CPU run"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        parser.error(
            f"--device {name} asked, but there are {count} CUDA device(s): 0 to {count - 1}"
        )


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--dtypes", nargs="+", default=list(DEFAULT_DTYPES), choices=DTYPES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--runs", type=int, default=DEFAULTS["runs"])
    parser.add_argument(
        "--warmup", type=int, default=DEFAULTS["warmup"], help="discarded processes"
    )
    parser.add_argument(
        "--warmup-videos", type=int, default=DEFAULTS["warmup_videos"],
        help="untimed videos before the timed one in each process (compiled mode: at least 1)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="CPU threads")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--frames", type=int, default=DEFAULTS["frames"])
    parser.add_argument("--height", type=int, default=DEFAULTS["height"], help="a multiple of 64")
    parser.add_argument("--width", type=int, default=DEFAULTS["width"], help="a multiple of 64")
    parser.add_argument(
        "--decode-chunk", type=int, default=DEFAULTS["decode_chunk"],
        help="frames decoded at a time, the same in both pipelines",
    )  # fmt: skip
    parser.add_argument("--compile-mode", default=DEFAULTS["compile_mode"])
    parser.add_argument("--compile-backend", default=DEFAULTS["compile_backend"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--preset", default=DEFAULTS["preset"], choices=PRESETS)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.warmup_videos < 0:
        parser.error(
            f"need --runs >= 1, --warmup >= 0, --threads >= 1 and --warmup-videos >= 0, got "
            f"{args.runs}, {args.warmup}, {args.threads} and {args.warmup_videos}"
        )
    if "compiled" in args.modes and args.warmup_videos < 1:
        parser.error(
            "--modes compiled needs --warmup-videos >= 1 (compilation happens in the first "
            f"video, which must not be the timed one), got {args.warmup_videos}"
        )
    sizes = (args.height, args.width)
    if min(sizes) < 64 or any(size % 64 for size in sizes):
        parser.error(f"need --height and --width multiples of 64, got {args.height}x{args.width}")
    if min(args.frames, args.steps, args.decode_chunk) < 1:
        parser.error(
            f"need --frames, --steps and --decode-chunk >= 1, got {args.frames}, {args.steps} "
            f"and {args.decode_chunk}"
        )
    args.libraries = list(dict.fromkeys(args.libraries))  # a name given twice: measured once
    args.dtypes, args.modes = list(dict.fromkeys(args.dtypes)), list(dict.fromkeys(args.modes))
    if args.render_only:
        return common.render_only(parser, SECTION, render, args)
    _check_device(parser, args.device)

    measured = run(args, log=functools.partial(print, flush=True))
    machine, date, gpu = common.machine_info(args.threads), common.today(), gpu_info(args.device)
    slug = args.machine or (gpu_slug(gpu) if gpu else None)
    path = common.results_path(machine, args.results_dir, slug, date)
    previous = common.read_results(path).get(SECTION, {})
    settings = {name: getattr(args, name) for name in ("preset", "height", "width", "frames")}
    for name in ("steps", "decode_chunk", "warmup_videos", "compile_mode", "compile_backend"):
        settings[name] = getattr(args, name)
    settings.update(device=args.device, gpu=gpu)
    if any(previous.get(key) != value for key, value in settings.items()):
        previous = {}  # rows of other settings (or another GPU) do not belong in the same table
    data = {**settings, "tensorrt_h100_s": TENSORRT_H100_S}
    data["rows"] = {**previous.get("rows", {}), **measured}
    return common.publish(SECTION, data, render, machine, date, args.results_dir, slug, args.readme)


if __name__ == "__main__":
    main()
