"""Where the temporal VAE decoder's CPU time goes: svd_core against diffusers, op by op.

Builds the full-width svd_xt VAE with random weights (diffusers' `AutoencoderKLTemporalDecoder`,
then ours from its state dict through `diffusers_vae_map`), decodes the same seeded latents
(1, F, 4, S, S) with both, all F frames at once, and reports:

- `compare`: CPU seconds (`time.process_time`, not wall time: the machine is shared) of one
  decode, ours and diffusers' interleaved (ours, theirs, ours, theirs, ...), the medians, their
  ratio, and max |ours - diffusers| (absolute and relative to max |diffusers|);
- `ops`: `torch.profiler` runs of each (`--repeats`, interleaved) and per op the least self-CPU
  time over them, side by side. The profiler measures wall time; the least over a few runs is the
  one least inflated by other processes on a shared machine.

    python benchmarks/profile_vae.py compare --frames 4 --size 8 --repeats 5
    python benchmarks/profile_vae.py ops --frames 4 --size 8 --repeats 3

Small defaults (4 latents of 8x8 -> 4 frames of 64x64, one thread): seconds per decode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `svd_core` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def build(seed: int = 0):
    """(diffusers' temporal-decoder VAE, ours with the same weights), full svd_xt width, eval."""
    import diffusers

    from svd_core import SVDConfig
    from svd_core.loading.vae_maps import diffusers_vae_config, diffusers_vae_map
    from svd_core.vae import VAE

    cfg = SVDConfig.svd_xt().vae
    kwargs = diffusers_vae_config(cfg)
    reference = getattr(diffusers, kwargs.pop("_class_name"))(**kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in reference.parameters():  # every parameter random, zero-initialised ones included
            scale = p[0].numel() ** -0.5 if p.ndim >= 2 else 0.5
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    ours = VAE(cfg).eval()
    unused = diffusers_vae_map(cfg).load_into(ours, reference.state_dict())
    if unused:
        raise RuntimeError(f"diffusers keys not loaded into ours: {sorted(unused)[:5]}")
    return reference, ours


def decoders(frames: int, size: int, seed: int = 1):
    """{"svd_core": call, "diffusers": call}: each decodes the same (1, frames, 4, size, size)."""
    reference, ours = build()
    z = torch.randn(1, frames, 4, size, size, generator=torch.Generator().manual_seed(seed))
    return {
        "svd_core": lambda: ours.decode(z),
        "diffusers": lambda: reference.decode(z.flatten(0, 1), num_frames=frames).sample[None],
    }


def compare(args: argparse.Namespace) -> None:
    """Interleaved CPU-time medians of both decoders, and their agreement."""
    calls = decoders(args.frames, args.size)
    seconds = {name: [] for name in calls}
    outputs = {}
    with torch.inference_mode():
        for name, call in calls.items():  # one untimed warm-up each
            outputs[name] = call()
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.process_time()
                call()
                seconds[name].append(time.process_time() - start)
    ours, theirs = (statistics.median(seconds[n]) for n in ("svd_core", "diffusers"))
    error = (outputs["svd_core"] - outputs["diffusers"]).abs().max().item()
    scale = outputs["diffusers"].abs().max().item()
    print(f"frames {args.frames}, latent {args.size}x{args.size}, threads {args.threads}")
    for name in calls:
        print(f"{name:9s} CPU s: " + " ".join(f"{s:.3f}" for s in seconds[name]))
    print(
        f"median CPU s: svd_core {ours:.3f}, diffusers {theirs:.3f}, ours / diffusers "
        f"{ours / theirs:.3f}"
    )
    print(f"max abs error {error:.3g}, relative {error / scale:.3g}")


def ops(args: argparse.Namespace) -> None:
    """Self-CPU milliseconds per op (least over the runs) of both decoders, the largest first."""
    from torch.profiler import ProfilerActivity, profile

    calls = decoders(args.frames, args.size)
    tables = {name: {} for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        for _ in range(args.repeats):  # interleaved; per op the least time over the runs
            for name, call in calls.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    call()
                for e in prof.key_averages():
                    ms = e.self_cpu_time_total / 1e3
                    tables[name][e.key] = (min(ms, tables[name].get(e.key, (ms,))[0]), e.count)
    ours, theirs = tables["svd_core"], tables["diffusers"]
    keys = sorted(
        set(ours) | set(theirs), key=lambda k: -max(ours.get(k, (0,))[0], theirs.get(k, (0,))[0])
    )
    print(f"frames {args.frames}, latent {args.size}x{args.size}, threads {args.threads}")
    print(f"{'op':40s} {'ours ms':>9s} {'n':>5s} {'diffusers ms':>12s} {'n':>5s}")
    for key in keys[: args.top]:
        (a, na), (b, nb) = ours.get(key, (0.0, 0)), theirs.get(key, (0.0, 0))
        print(f"{key:40s} {a:9.1f} {na:5d} {b:12.1f} {nb:5d}")
    total = {n: sum(v[0] for v in t.values()) for n, t in tables.items()}
    print(f"{'total self CPU':40s} {total['svd_core']:9.1f} {'':5s} {total['diffusers']:12.1f}")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run `compare` or `ops`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("compare", "ops"))
    parser.add_argument("--frames", type=int, default=4, help="latents decoded at once")
    parser.add_argument("--size", type=int, default=8, help="latent height and width")
    parser.add_argument("--repeats", type=int, default=5, help="timed or profiled decodes of each")
    parser.add_argument("--top", type=int, default=30, help="ops listed (ops)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"compare": compare, "ops": ops}[args.mode](args)


if __name__ == "__main__":
    main()
