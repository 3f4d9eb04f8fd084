"""UNet forward on CPU in float32: seconds, FLOPs and fraction of the matmul peak, svd_core vs diffusers.

    python benchmarks/bench_unet.py [--latent 32x32 40x72] [--runs 3] [--warmup 1] [--threads 2]
                                    [--batch 2] [--frames 14] [--preset svd_xt] [--seed 0]

For each latent size (issue 9 asks for at least 1.1x diffusers' eager speed at 32x32 and no
slower at 40x72, with the same outputs), the two UNets get the same seeded random weights (our
UNet's, converted to diffusers' layout in memory through svd_core's diffusers key map) and the same
inputs: x (B, F, 8, h, w), c_noise for sigma 700 and sigma 1, a one-token image embedding and the
official added conditioning (fps_id 6, motion bucket 127, cond_aug 0.02). Diffusers builds the
res blocks of some levels with GroupNorm eps 1e-6 where the official code and svd_core use 1e-5
(DESIGN.md); its eps is set to 1e-5 so that both compute the same function.

Every forward is its own fresh process (common.run_in_subprocess, with --threads torch threads):
it builds the UNet, runs --warmup untimed forwards (the first call in a process pays one-time
costs: thread pool, oneDNN primitives), then times one forward under torch.no_grad (inference, as
both pipelines run it). svd_core's and diffusers' processes alternate, run after run, so that a
change in the load of a shared machine reaches both alike; each row takes the median of --runs.
Also measured, each in a process of its own:

- FLOPs of one forward of each library (torch.utils.flop_counter.FlopCounterMode on the meta
  device: no memory, no time). svd_core's inference paths skip work that diffusers does (the
  queries and keys of attention to one token), so the two counts differ;
- the fp32 matmul peak of this machine on the same threads: the best of a few 4096^3 matmuls,
  measured before and after the forwards (the higher counts). A library's fraction of peak is its
  own FLOPs / its seconds / the peak;
- max |ours - diffusers| and that over max |diffusers| ("relative") on the outputs of the first
  run of each library (the outputs are saved to a temporary folder).

Results go to benchmarks/results/<machine>-<date>.json (key "unet_forward", rows merged by latent
size) and the table to benchmarks/README.md; `--render-only RESULTS_JSON` rewrites the table from a
results file without measuring.
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

LIBRARIES = ("svd_core", "diffusers")
PRESETS = ("svd_xt", "svd", "tiny")  # SVDConfig presets: full width, and tiny for the tests
SECTION = "unet_forward"
TARGETS = {"32x32": 1.1, "40x72": 1.0}  # issue 9: minimum speed-up over diffusers per latent size
PEAK_SIZE = 4096  # side of the square matmuls that measure the peak
ADDED_IDS = (6.0, 127.0, 0.02)  # fps_id, motion_bucket_id, cond_aug: the official defaults
SIGMAS = (700.0, 1.0)  # the noise level of each clip in a batch of two (more clips repeat them)


# ---- models and inputs -------------------------------------------------------------------------


def unet_config(preset: str):
    """The UNetConfig of an SVDConfig preset."""
    from svd_core.config import SVDConfig

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return getattr(SVDConfig, preset)().unet


def random_unet(preset: str, seed: int):
    """svd_core's UNet with seeded random weights, built without a default initialisation first.

    The scheme of `svd_core.parity.random_model`: matrices and kernels ~ N(0, (0.5 / sqrt(fan_in))^2),
    norm scales ~ 1 + N(0, 0.05^2), other vectors ~ N(0, 0.05^2), so activations stay of order one
    and every block changes its input.
    """
    import torch

    from svd_core.unet import UNet

    with torch.device("meta"):
        unet = UNet(unet_config(preset))
    unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            parameter.normal_(generator=generator)
            if parameter.ndim >= 2:
                parameter.mul_(0.5 * parameter[0].numel() ** -0.5)
            else:
                offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                parameter.mul_(0.05).add_(offset)
    return unet.eval()


def diffusers_unet(unet):
    """diffusers' UNetSpatioTemporalConditionModel holding `unet`'s weights (the same storage),
    with the official GroupNorm eps 1e-5 in every res block."""
    import diffusers
    import torch
    from diffusers.models.resnet import SpatioTemporalResBlock

    from svd_core.loading.unet_maps import diffusers_unet_config, diffusers_unet_map

    cfg = unet.cfg
    with torch.device("meta"):
        reference = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg))
    weights = diffusers_unet_map(cfg).to_theirs(unet.state_dict())
    reference.load_state_dict(weights, strict=True, assign=True)
    for module in reference.modules():
        if isinstance(module, SpatioTemporalResBlock):
            for block in (module.spatial_res_block, module.temporal_res_block):
                block.norm1.eps = block.norm2.eps = cfg.norm_eps
    return reference.eval()


def unet_inputs(cfg, batch: int, frames: int, height: int, width: int, seed: int = 1) -> dict:
    """The inputs both UNets get: x (B, F, C_in, h, w), c_noise (B,), context (B, 1, D), the added
    ids (B, 3) for diffusers and their embedding (B, 3 * 256) for svd_core."""
    import torch

    from svd_core.nn import embed_added

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.in_channels, height, width, generator=generator)
    sigmas = torch.tensor([SIGMAS[i % len(SIGMAS)] for i in range(batch)])
    context = torch.randn(batch, 1, cfg.context_dim, generator=generator)
    ids = torch.tensor([ADDED_IDS] * batch)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    return {
        "x": x,
        "c_noise": 0.25 * sigmas.log(),
        "context": context,
        "ids": ids,
        "vector": vector,
    }


def forward_function(library: str, preset: str, seed: int):
    """(a function inputs -> output (B, F, 4, h, w), the UNetConfig) for `library`'s UNet."""
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    unet = random_unet(preset, seed)
    cfg = unet.cfg
    if library == "svd_core":
        return lambda i: unet(i["x"], i["c_noise"], i["context"], i["vector"]), cfg
    reference = diffusers_unet(unet)  # the same tensors: `unet` goes when this returns
    return lambda i: reference(i["x"], i["c_noise"], i["context"], i["ids"]).sample, cfg


# ---- measurements (each runs in a fresh process, through common.run_in_subprocess) -------------


def measure_forward(
    library: str,
    preset: str,
    height: int,
    width: int,
    batch: int,
    frames: int,
    seed: int = 0,
    warmup: int = 1,
    output: str | None = None,
) -> dict:
    """Build `library`'s UNet, run `warmup` untimed forwards, then time one (torch.no_grad).

    Returns seconds (the timed forward), build_s, warmup_s (all warm-ups) and threads; with
    `output`, the timed forward's output is saved there (torch.save) for `output_error`.
    """
    import torch

    start = time.perf_counter()
    forward, cfg = forward_function(library, preset, seed)
    inputs = unet_inputs(cfg, batch, frames, height, width)
    built = time.perf_counter()
    with torch.no_grad():
        for _ in range(warmup):
            forward(inputs)
        warmed = time.perf_counter()
        result = forward(inputs)
        done = time.perf_counter()
    if output is not None:
        torch.save(result, output)
    return {
        "seconds": done - warmed,
        "build_s": built - start,
        "warmup_s": warmed - built,
        "threads": torch.get_num_threads(),
    }


def measure_flops(library: str, preset: str, height: int, width: int, batch: int, frames: int):
    """FLOPs of one inference forward of `library`'s UNet, counted on the meta device.

    FlopCounterMode counts matmuls and convolutions (attention through its math path on meta).
    It has no formula for the in-place batched matmul of svd_core's temporal convolutions
    (`conv_over_frames`, aten.baddbmm_); that one is counted here as 2 * B * M * K * N.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from svd_core.unet import UNet

    cfg = unet_config(preset)
    with torch.device("meta"):
        if library == "svd_core":
            unet = UNet(cfg).eval()
            forward = lambda i: unet(i["x"], i["c_noise"], i["context"], i["vector"])  # noqa: E731
        elif library == "diffusers":
            import diffusers

            from svd_core.loading.unet_maps import diffusers_unet_config

            reference = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg))
            # Its blend logits are made with the legacy torch.Tensor([...]), which ignores the
            # default device: move them too.
            reference = reference.to("meta").eval()
            forward = lambda i: reference(i["x"], i["c_noise"], i["context"], i["ids"])  # noqa: E731
        else:
            raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    inputs = {k: v.to("meta") for k, v in unet_inputs(cfg, batch, frames, height, width).items()}

    def in_place_bmm_flops(input_shape, batch1_shape, batch2_shape, *args, **kwargs) -> int:
        count, m, k = batch1_shape
        return 2 * count * m * k * batch2_shape[-1]

    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.baddbmm_: in_place_bmm_flops}
    )
    with torch.no_grad(), counter:
        forward(inputs)
    return {"flops": counter.get_total_flops()}


def measure_matmul_peak(size: int = PEAK_SIZE, repeats: int = 5) -> dict:
    """The best fp32 GFLOP/s of a size x size x size matmul (after one warm-up) on this process's
    torch threads: the machine's practical peak for the work both UNets are made of."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * size**3 / best / 1e9, "size": size, "threads": torch.get_num_threads()}


def output_error(ours: str, theirs: str) -> dict:
    """max |ours - theirs| and that over max |theirs| of two saved outputs."""
    import torch

    a, b = torch.load(ours), torch.load(theirs)
    if a.shape != b.shape:
        raise ValueError(f"outputs of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    max_abs = (a.double() - b.double()).abs().max().item()
    return {"max_abs": max_abs, "relative": max_abs / b.double().abs().max().item()}


# ---- the run -----------------------------------------------------------------------------------


def parse_latent(text: str) -> tuple[int, int]:
    """'40x72' -> (40, 72): a latent height and width (pixels / 8), as the command line takes."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(text))
    if not match or 0 in (int(match[1]), int(match[2])):
        raise ValueError(
            f"a latent size is HEIGHTxWIDTH in latent pixels, e.g. 32x32, got {text!r}"
        )
    return int(match[1]), int(match[2])


def row_command(args: argparse.Namespace, latent: str) -> str:
    """The command that measures one row again."""
    parts = ["python benchmarks/bench_unet.py", f"--latent {latent}"]
    defaults = {"runs": 3, "warmup": 1, "threads": 2, "batch": 2, "frames": 14, "seed": 0}
    parts += [f"--{k} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v]
    if args.preset != "svd_xt":
        parts.append(f"--preset {args.preset}")
    return " ".join(parts)


def measure_row(args: argparse.Namespace, latent: str, folder: Path, log=print) -> dict:
    """One latent size: FLOPs, then the forwards of both libraries alternating, then the error."""
    height, width = parse_latent(latent)
    target = "benchmarks.bench_unet:"
    shape = dict(
        preset=args.preset, height=height, width=width, batch=args.batch, frames=args.frames
    )

    def child(function: str, kwargs: dict) -> dict:
        return common.run_in_subprocess(target + function, kwargs, args.threads, args.timeout)

    flops = {lib: child("measure_flops", {"library": lib, **shape})["flops"] for lib in LIBRARIES}
    runs = {lib: [] for lib in LIBRARIES}
    for index in range(args.runs):
        for library in LIBRARIES:
            output = str(folder / f"{latent}-{library}.pt") if index == 0 else None
            kwargs = {"library": library, **shape, "seed": args.seed, "warmup": args.warmup}
            measured = child("measure_forward", {**kwargs, "output": output})
            runs[library].append(measured)
            log(f"{latent} {library:9s} run {index + 1}: {measured['seconds']:.2f} s")
    error = output_error(*(str(folder / f"{latent}-{lib}.pt") for lib in LIBRARIES))
    row = {"latent": latent, "command": row_command(args, latent), **shape}
    for library in LIBRARIES:
        median = common.median_fields(runs[library])
        row[library] = {
            "seconds": median["seconds"],
            "flops": flops[library],
            "load_average": median["load_average"],
            "runs": runs[library],
        }
    row["speedup"] = row["diffusers"]["seconds"] / row["svd_core"]["seconds"]
    row["error"] = error
    row["warmup"], row["threads"] = args.warmup, args.threads
    return row


def run(args: argparse.Namespace, log=print) -> dict:
    """Measure every requested latent size; return {"peak": ..., "rows": ...} (rows by latent)."""
    target = "benchmarks.bench_unet:measure_matmul_peak"
    peak_kwargs = {"size": args.peak_size}
    before = common.run_in_subprocess(target, peak_kwargs, args.threads, args.timeout)
    log(f"fp32 matmul peak: {before['gflops']:.1f} GFLOP/s ({args.threads} threads)")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="svd_core_bench_unet_") as folder:
        for latent in args.latent:
            rows[latent] = measure_row(args, latent, Path(folder), log)
    after = common.run_in_subprocess(target, peak_kwargs, args.threads, args.timeout)
    peak = max(before["gflops"], after["gflops"])
    log(f"fp32 matmul peak after: {after['gflops']:.1f} GFLOP/s")
    for row in rows.values():
        row["peak_gflops"] = peak
        for library in LIBRARIES:
            side = row[library]
            side["fraction_of_peak"] = side["flops"] / side["seconds"] / 1e9 / peak
        log(
            f"{row['latent']}: svd_core {row['svd_core']['seconds']:.2f} s, diffusers "
            f"{row['diffusers']['seconds']:.2f} s, speed-up {row['speedup']:.3f}x, relative error "
            f"{row['error']['relative']:.1e}"
        )
    return {"peak": {"before": before, "after": after, "gflops": peak}, "rows": rows}


def render(data: dict) -> str:
    """The README section: one row per latent size, with the command that measures it."""
    rows = sorted(data["rows"].values(), key=lambda r: parse_latent(r["latent"]))
    table = common.markdown_table(
        ["latent", "svd_core s", "diffusers s", "speed-up", "target", "TFLOP svd_core / diffusers",
         "% of peak svd_core / diffusers", "max abs err", "rel err", "command"],
        [
            [r["latent"], r["svd_core"]["seconds"], r["diffusers"]["seconds"], r["speedup"],
             f"{TARGETS[r['latent']]}x" if r["latent"] in TARGETS else "-",
             f"{r['svd_core']['flops'] / 1e12:.3f} / {r['diffusers']['flops'] / 1e12:.3f}",
             f"{100 * r['svd_core']['fraction_of_peak']:.0f}% / "
             f"{100 * r['diffusers']['fraction_of_peak']:.0f}%",
             f"{r['error']['max_abs']:.1e}", f"{r['error']['relative']:.1e}", f"`{r['command']}`"]
            for r in rows
        ],
    )  # fmt: skip
    machine = data["machine"]
    loads = [
        run["load_average"] for r in rows for lib in LIBRARIES for run in r[lib]["runs"]
    ]  # fmt: skip
    first = rows[0] if rows else {}
    peaks = sorted(
        {r["peak_gflops"] for r in rows if "peak_gflops" in r} or {data["peak"]["gflops"]}
    )
    peak_text = " to ".join(f"{p:.1f}" for p in (peaks[0], peaks[-1])[: len(peaks)]) + " GFLOP/s"
    return "\n".join(
        [
            f"Measured {data['date']} on {machine['cpu']} ({machine['usable_cores']} cores, "
            f"{machine['memory_gib']} GiB), torch {machine['packages']['torch']}, diffusers "
            f"{machine['packages']['diffusers']}, {machine['threads']} thread(s), the machine's "
            f"1-minute load average {min(loads, default=0):.1f} to {max(loads, default=0):.1f}; "
            f"preset {data['preset']}, batch {first.get('batch')}, {first.get('frames')} frames, "
            f"float32, random weights. Seconds per forward: the median of each row's runs, one "
            f"forward per fresh process after its warm-up forward, the two libraries alternating. "
            f"fp32 matmul peak {peak_text} "
            f"({data['peak']['before']['size']}^3, best of 5, before and after each run). % of "
            f"peak: each library's own FLOPs (FlopCounterMode) / seconds / the peak of the row's "
            f"run. Error: svd_core's output against diffusers' (diffusers' res-block eps set "
            f"to the official 1e-5).",
            "",
            table,
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latent", nargs="+", default=["32x32", "40x72"], help="HxW, latent")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards, one per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards in each process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--preset", default="svd_xt", choices=PRESETS)
    parser.add_argument("--seed", type=int, default=0, help="random weights")
    parser.add_argument("--peak-size", type=int, default=PEAK_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per process")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.render_only:
        return common.render_only(parser, SECTION, render, args)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.batch < 1 or args.frames < 1:
        parser.error(
            f"need --runs, --threads, --batch, --frames >= 1 and --warmup >= 0, got runs "
            f"{args.runs}, warmup {args.warmup}, threads {args.threads}, batch {args.batch}, "
            f"frames {args.frames}"
        )
    try:
        args.latent = [f"{h}x{w}" for h, w in map(parse_latent, args.latent)]
    except ValueError as error:
        parser.error(str(error))

    measured = run(args, log=functools.partial(print, flush=True))
    machine, date = common.machine_info(args.threads), common.today()
    path = common.results_path(machine, args.results_dir, args.machine, date)
    previous = common.read_results(path).get(SECTION, {})
    if previous.get("preset") != args.preset or previous.get("threads") != args.threads:
        previous = {}  # rows of another preset or thread count do not belong in the same table
    data = {
        "preset": args.preset,
        "threads": args.threads,
        "targets_speedup": TARGETS,
        "peak": measured["peak"],
        "rows": {**previous.get("rows", {}), **measured["rows"]},
    }
    return common.publish(
        SECTION, data, render, machine, date, args.results_dir, args.machine, args.readme
    )


if __name__ == "__main__":
    main()
