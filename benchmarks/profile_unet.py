"""Where the UNet's CPU time goes, ours against diffusers, at the official svd_xt width.

Builds our UNet with random weights and diffusers' `UNetSpatioTemporalConditionModel` holding the
same tensors (filled through our diffusers key map, sharing storage: one model's memory), with the
res-block GroupNorm eps of diffusers set to the official 1e-5 so that both compute the same function.

    python benchmarks/profile_unet.py peak                      # fp32 matmul peak, this machine
    python benchmarks/profile_unet.py compare --latent 32 32    # interleaved timings, ratio, % peak
    python benchmarks/profile_unet.py profile --latent 16 16    # torch.profiler top ops, both models
    python benchmarks/profile_unet.py blocks --latent 32 32     # one res block and transformer per level

`compare` runs ours, diffusers, ours, diffusers, ... in one process after one warm-up each, times
every call on the wall clock and in process CPU time, and reports the per-pair ratios (ours /
diffusers: below 1 means ours is faster), the FLOPs of one forward (FlopCounterMode, on the meta
device) and the fraction of the fp32 matmul peak (a 4096^3 matmul, measured before and after in the
same process) that each reaches. On a machine shared with other jobs, prefer the CPU clock with
OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads then sleep instead of spinning on the clock); `blocks`
with `--threads 1 --clock cpu` is the quick, steady proxy used while developing. `--save NAME` also
writes the output to benchmarks/results/NAME.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from svd_core.config import SVDConfig, UNetConfig
from svd_core.loading.unet_maps import diffusers_unet_config, diffusers_unet_map
from svd_core.nn import embed_added
from svd_core.unet import UNet

RESULTS = Path(__file__).resolve().parent / "results"

# How our UNet runs: eager (the default), or through torch.compile (inductor); diffusers always runs
# eager.
VARIANTS = ("eager", "compile")


def matmul_peak_gflops(size: int = 4096, repeats: int = 5, clock: str = "wall") -> float:
    """The best fp32 GFLOP/s of a size x size x size matmul on the current torch threads.

    With clock="cpu" the rate is per second of process CPU time (all threads together).
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = min(_timed(lambda: torch.mm(a, b), clock) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, at a scale that keeps activations of order one (1/sqrt(fan-in))."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                std = p[0].numel() ** -0.5
            elif name.endswith("mix_factor"):
                std = 1.0
            else:
                std = 0.1
            p.normal_(0.0, std, generator=generator)


def build_pair(cfg: UNetConfig, seed: int = 0) -> tuple[UNet, torch.nn.Module]:
    """Our UNet with random weights and diffusers' UNet sharing the same weight tensors."""
    import diffusers
    from diffusers.models.resnet import SpatioTemporalResBlock

    with torch.device("meta"):
        ours = UNet(cfg)
        reference = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg))
    ours.to_empty(device="cpu")
    _randomize(ours, seed)
    ours.eval()
    theirs = diffusers_unet_map(cfg).to_theirs(ours.state_dict())
    reference.load_state_dict(theirs, strict=True, assign=True)  # shares ours' storage
    reference.eval()
    # The official eps in every res block (diffusers builds some with 1e-6; DESIGN.md).
    for module in reference.modules():
        if isinstance(module, SpatioTemporalResBlock):
            for block in (module.spatial_res_block, module.temporal_res_block):
                block.norm1.eps = block.norm2.eps = 1e-5
    return ours, reference


def make_inputs(cfg: UNetConfig, batch: int, frames: int, height: int, width: int, seed: int = 1):
    """Random UNet inputs: x, c_noise, context (one token), added_time_ids, and our vector."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.in_channels, height, width, generator=generator)
    c_noise = 0.25 * torch.log(torch.linspace(700.0, 0.5, batch))
    context = torch.randn(batch, 1, cfg.context_dim, generator=generator)
    ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    return x, c_noise, context, ids, vector


def ours_callable(unet: UNet, variant: str, inputs):
    """A no-argument forward of our UNet in the given speed variant."""
    x, c_noise, context, _, vector = inputs
    if variant == "compile":
        unet = torch.compile(unet)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return unet(x, c_noise, context, vector)

    return run


def diffusers_callable(reference: torch.nn.Module, inputs):
    """A no-argument forward of diffusers' UNet."""
    x, c_noise, context, ids, _ = inputs

    def run() -> torch.Tensor:
        with torch.no_grad():
            return reference(x, c_noise, context, ids).sample

    return run


CLOCKS = ("wall", "cpu")


def _timed_both(run) -> dict[str, float]:
    """Seconds one call takes on the wall clock and in process CPU time (see `_timed`)."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def _timed(run, clock: str) -> float:
    """Seconds one call takes: wall-clock time, or the CPU time of this process ("cpu").

    On a shared machine where other jobs take cores or pause this process, the process CPU time is
    the steadier measure (set OMP_WAIT_POLICY=PASSIVE so that idle OpenMP threads do not spin).
    """
    clock_fn = time.process_time if clock == "cpu" else time.perf_counter
    start = clock_fn()
    run()
    return clock_fn() - start


def _batched_matmul_flops(input_shape, batch1_shape, batch2_shape, *args, **kwargs) -> int:
    """FLOPs of baddbmm(input, batch1, batch2): 2 * B * M * K * N."""
    batch, m, k = batch1_shape
    return 2 * batch * m * k * batch2_shape[-1]


def count_flops_meta(
    cfg: UNetConfig, batch: int, frames: int, height: int, width: int
) -> tuple[int, int]:
    """FLOPs of one forward of the full computation (the references' work: our UNet with gradients
    recorded, which takes no inference shortcut) and of our inference forward, counted by
    FlopCounterMode on the meta device: no memory, no time, and attention counted too (on CPU
    tensors FlopCounterMode has no formula for the CPU flash-attention kernel and counts it as 0).
    """
    counts = []
    inputs = make_inputs(cfg, batch, frames, height, width)
    x, c_noise, context, _, vector = (t.to("meta") for t in inputs)
    with torch.device("meta"):
        ours = UNet(cfg)
    # FlopCounterMode knows baddbmm but not its in-place form (`conv_over_frames`).
    in_place = {torch.ops.aten.baddbmm_: _batched_matmul_flops}
    for grad in (True, False):
        counter = FlopCounterMode(display=False, custom_mapping=in_place)
        with torch.set_grad_enabled(grad), counter:
            ours(x, c_noise, context, vector)
        counts.append(counter.get_total_flops())
    return counts[0], counts[1]


def profile_tables(run, rows: int = 30) -> str:
    """torch.profiler's tables for one call: the top CPU ops by self time, then the same split by
    input shapes (which matmul, which copy). The profiler's times are wall-clock times."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        run()
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50
    )
    return f"{by_op}\n-- by input shape --\n{by_shape}"


def _header(args) -> str:
    return (
        f"svd_xt UNet (full width), B={args.batch}, F={args.frames}, latent "
        f"{args.latent[0]}x{args.latent[1]}, fp32, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )


def command_peak(args) -> str:
    """Report the fp32 matmul peak."""
    rate = matmul_peak_gflops(clock=args.clock)
    threads = torch.get_num_threads()
    return f"fp32 matmul peak ({threads} threads, {args.clock} clock): {rate:.1f} GFLOP/s"


def command_profile(args) -> str:
    """Profile one forward of each model (after one warm-up) and print both tables."""
    cfg = SVDConfig.svd_xt().unet
    ours, reference = build_pair(cfg)
    inputs = make_inputs(cfg, args.batch, args.frames, *args.latent)
    out = [_header(args)]
    for name, run in (
        (f"ours ({args.variant})", ours_callable(ours, args.variant, inputs)),
        ("diffusers", diffusers_callable(reference, inputs)),
    ):
        run()
        seconds = _timed_both(run)
        out += [
            f"\n== {name}: {seconds['wall']:.2f} s wall, {seconds['cpu']:.2f} s CPU (unprofiled) ==",
            profile_tables(run, args.rows),
        ]
    return "\n".join(out)


def command_compare(args) -> str:
    """Interleaved timings of ours and diffusers, their ratio, the FLOPs and the fraction of peak.

    Every call is timed on both clocks, wall and process CPU time.
    """
    cfg = SVDConfig.svd_xt().unet
    flops, flops_ours = count_flops_meta(cfg, args.batch, args.frames, *args.latent)
    ours, reference = build_pair(cfg)
    inputs = make_inputs(cfg, args.batch, args.frames, *args.latent)
    run_ours = ours_callable(ours, args.variant, inputs)
    run_ref = diffusers_callable(reference, inputs)

    expected = run_ref()  # warm-up of both, and the outputs compared
    got = run_ours()
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    peak = {clock: matmul_peak_gflops(clock=clock) for clock in CLOCKS}

    times = {(name, clock): [] for name in ("ours", "diffusers") for clock in CLOCKS}
    for _ in range(args.repeats):
        for name, run in (("ours", run_ours), ("diffusers", run_ref)):
            for clock, seconds in _timed_both(run).items():
                times[name, clock].append(seconds)
    peak_after = {clock: matmul_peak_gflops(clock=clock) for clock in CLOCKS}
    lines = [
        _header(args),
        f"variant: {args.variant}; output max|ours - diffusers| / max|diffusers| = {rel:.2e}",
        f"FLOPs per forward (FlopCounterMode, meta device): full computation (diffusers' work) "
        f"{flops / 1e12:.3f} T; ours at inference {flops_ours / 1e12:.3f} T (rates use the former)",
    ]
    for clock in CLOCKS:
        best_peak = max(peak[clock], peak_after[clock])
        lines.append(
            f"-- {clock} clock; fp32 matmul peak {peak[clock]:.1f} GFLOP/s before, "
            f"{peak_after[clock]:.1f} after (GFLOP per {clock} second)"
        )
        medians = {}
        for name in ("ours", "diffusers"):
            runs = times[name, clock]
            medians[name] = statistics.median(runs)
            rate = flops / medians[name] / 1e9
            lines.append(
                f"{name:9s}: runs {', '.join(f'{t:.2f}' for t in runs)} s; median "
                f"{medians[name]:.2f} s; {rate:.1f} GFLOP/s = {rate / best_peak:.0%} of peak"
            )
        pairs = [
            o / d for o, d in zip(times["ours", clock], times["diffusers", clock], strict=True)
        ]
        lines.append(
            f"ours / diffusers time: per pair {', '.join(f'{p:.3f}' for p in pairs)}; "
            f"median {statistics.median(pairs):.3f}; speed-up of the medians "
            f"{medians['diffusers'] / medians['ours']:.3f}x"
        )
    return "\n".join(lines)


def command_blocks(args) -> str:
    """Time one res block and one transformer per level, ours against diffusers, interleaved.

    The blocks see the shapes they see inside the UNet at `--latent` (level i at latent / 2**i);
    a quick proxy for the whole network, seconds instead of minutes.
    """
    cfg = SVDConfig.svd_xt().unet
    ours, reference = build_pair(cfg)
    if args.variant == "compile":
        raise SystemExit("blocks: --variant compile is for the whole UNet (compare, profile)")
    generator = torch.Generator().manual_seed(2)
    frames = args.batch * args.frames
    emb = torch.randn(frames, cfg.time_embed_dim, generator=generator)
    context = torch.randn(args.batch, 1, cfg.context_dim, generator=generator)
    context = context.repeat_interleave(args.frames, dim=0)
    indicator = torch.zeros(args.batch, args.frames)
    lines = [
        _header(args),
        f"variant: {args.variant}; {args.clock} time, best of {args.repeats}; "
        "ratio = ours time / diffusers time",
    ]
    totals = {"ours": 0.0, "diffusers": 0.0}
    for level, channels in enumerate(cfg.level_channels):
        height, width = (size // 2**level for size in args.latent)
        h = h_ours = torch.randn(frames, channels, height, width, generator=generator)
        pairs = {
            "res block": (
                lambda lv=level, x=h_ours: ours.encoder[lv].res_blocks[-1](x, emb, indicator),
                lambda lv=level, x=h: reference.down_blocks[lv].resnets[-1](x, emb, indicator),
            )
        }
        if level in cfg.attention_levels:
            pairs["transformer"] = (
                lambda lv=level, x=h_ours: ours.encoder[lv].transformers[-1](x, context, indicator),
                lambda lv=level, x=h: reference.down_blocks[lv].attentions[-1](
                    x, context, indicator, return_dict=False
                )[0],
            )
        for name, (run_ours, run_ref) in pairs.items():
            best = {"ours": float("inf"), "diffusers": float("inf")}
            with torch.no_grad():
                rel = (run_ours() - run_ref()).abs().max() / run_ref().abs().max()
                for _ in range(args.repeats):
                    for who, run in (("ours", run_ours), ("diffusers", run_ref)):
                        best[who] = min(best[who], _timed(run, args.clock))
            for who in totals:
                totals[who] += best[who]
            lines.append(
                f"level {level} ({channels} ch, {height}x{width}) {name:11s}: ours "
                f"{best['ours'] * 1e3:8.1f} ms, diffusers {best['diffusers'] * 1e3:8.1f} ms, "
                f"ratio {best['ours'] / best['diffusers']:.3f}; rel diff {rel:.1e}"
            )
    lines.append(f"sum of best times: ratio {totals['ours'] / totals['diffusers']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: peak, compare or profile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("peak", "compare", "profile", "blocks"))
    parser.add_argument("--latent", type=int, nargs=2, default=(16, 16), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--variant", choices=VARIANTS, default="eager")
    parser.add_argument("--save", metavar="NAME", help="also write benchmarks/results/NAME.txt")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = {
        "peak": command_peak,
        "compare": command_compare,
        "profile": command_profile,
        "blocks": command_blocks,
    }
    text = command[args.command](args)
    print(text)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.save}.txt").write_text(text + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
