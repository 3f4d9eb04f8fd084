"""The VAE and the image encoder at full size: seconds, peak memory and agreement, svd_core against diffusers.

    python benchmarks/bench_components.py [--runs 3] [--warmup 1] [--threads 2]
                                          [--cases vae-decode-chunk14 vae-decode-chunk2 vae-encode
                                                   clip-encode clip-vit]
                                          [--size 256] [--frames 14] [--cache DIR] [--preset svd_xt]

Weights: the random full-size checkpoint of make_weights.py (written first if missing; only the
float32 files are needed): svd_core reads the official single file, diffusers its folder, the same
noise in both layouts. svd_core loads it with `low_memory=True` and holds only the measured part
in memory (`model.resident(part)`); diffusers loads the one component it needs
(`AutoencoderKLTemporalDecoder` or `CLIPVisionModelWithProjection` and its `CLIPImageProcessor`).
Everything in float32, batch 1, inputs drawn from a seeded generator, the same in both processes.

What is timed: one call, after every weight was read once (svd_core's are views of the mapped
file: no page fault is timed, for either library) and, for the cases that take seconds rather than
minutes (all but vae-decode), after one untimed call that warms the allocator and oneDNN. `--warmup`
whole processes before the measured ones are discarded.

- vae-decode-chunkN: latents (1, F, 4, S/8, S/8), unscaled (standard normal / 0.18215), to frames
  (1, F, 3, S, S), N frames at a time: ours `vae.decode(z, chunk_size=N)`; diffusers
  `vae.decode(z[i:i+N], num_frames=n).sample` over the flattened frames, as its pipeline's
  `decode_latents` does (the same chunks for one video).
- vae-encode: one image (1, 3, S, S) in [-1, 1] to the posterior mode (1, 4, S/8, S/8): ours
  `vae.encode`; diffusers `vae.encode(x).latent_dist.mode()`.
- clip-encode: one image (1, 3, S, S) in [-1, 1] to the embedding (1, 1024), preprocessing
  included, each library its own way: ours `image_encoder(x)` with preprocess="diffusers"
  (antialiased resize to 224, normalization in torch); diffusers' pipeline path for an image
  (`_resize_with_antialiasing` to 224, (x + 1) / 2, its `CLIPImageProcessor` normalizing through
  numpy, then `image_encoder(pixels).image_embeds`). For S > 224 both recipes smooth the same way.
- clip-vit: the ViT alone on the same normalized 224x224 pixels: ours `encode_pixels`; diffusers
  `image_encoder(pixels).image_embeds`.

Reported per case: seconds (median over the measured processes), ours / diffusers and the speed-up
(diffusers / ours), the peak resident memory of each process, and max |ours - diffusers| on the
output of the last run of each, absolute and relative to max |diffusers|.
Results: benchmarks/results/<machine>-<date>.json (key "components"), table in benchmarks/README.md.
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

CASES = ("vae-decode-chunk14", "vae-decode-chunk2", "vae-encode", "clip-encode", "clip-vit")
LIBRARIES = ("svd_core", "diffusers")
SECTION = "components"
# The part of a low-memory svd_core model each case needs (svd_core.model.PARTS).
PARTS = {"vae-decode": "vae_decoder", "vae-encode": "vae_encoder", "clip": "image_encoder"}


def parse_case(case: str) -> tuple[str, int | None]:
    """(kind, decode chunk): "vae-decode-chunk2" -> ("vae-decode", 2); "clip-vit" -> ("clip-vit", None)."""
    if case.startswith("vae-decode-chunk"):
        chunk = case.removeprefix("vae-decode-chunk")
        if chunk.isdigit() and int(chunk) >= 1:
            return "vae-decode", int(chunk)
    elif case in CASES:
        return case, None
    raise ValueError(
        f"a case is one of {CASES} (any chunk size >= 1 in vae-decode-chunkN), got {case!r}"
    )


# ---- the inputs (the same in every process) ----------------------------------------------------


def make_input(kind: str, size: int, frames: int, seed: int, clip_size: int):
    """The seeded input of one case: latents (1, F, 4, S/8, S/8), an image (1, 3, S, S) in [-1, 1],
    or for clip-vit normalized pixels (1, 3, clip_size, clip_size)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if kind == "vae-decode":
        latents = torch.randn(1, frames, 4, size // 8, size // 8, generator=generator)
        return latents / 0.18215  # unscaled, as the pipeline hands them to the decoder
    if kind == "clip-vit":
        return torch.randn(1, 3, clip_size, clip_size, generator=generator)
    return torch.rand(1, 3, size, size, generator=generator) * 2 - 1


# ---- measurements (each runs in a fresh process, through common.run_in_subprocess) -------------


def _svd_core_call(kind: str, chunk: int | None, source: str):
    """(what to call, its context manager, the modules it uses, the CLIP input size): svd_core."""
    import svd_core

    model = svd_core.load(source, low_memory=True)
    encoder, vae = model.image_encoder, model.vae
    encoder.preprocess = "diffusers"
    part = PARTS["clip" if kind.startswith("clip") else kind]
    calls = {
        "vae-decode": lambda x: vae.decode(x, chunk_size=chunk),
        "vae-encode": vae.encode,
        "clip-encode": encoder,
        "clip-vit": encoder.encode_pixels,
    }
    modules = model.part_modules(part)
    return calls[kind], model.resident(part), modules, model.config.image_encoder.image_size


def _diffusers_call(kind: str, chunk: int | None, folder: str):
    """(what to call, a context manager, the modules it uses, the CLIP input size): diffusers."""
    import contextlib

    import torch

    folder = Path(folder)
    if kind.startswith("vae"):
        from diffusers import AutoencoderKLTemporalDecoder

        vae = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae").eval()

        def decode(latents: torch.Tensor) -> torch.Tensor:
            flat = latents.flatten(0, 1)  # (F, 4, h, w), as diffusers' decode_latents
            parts = [
                vae.decode(flat[i : i + chunk], num_frames=flat[i : i + chunk].shape[0]).sample
                for i in range(0, flat.shape[0], chunk)
            ]
            return torch.cat(parts).unflatten(0, latents.shape[:2])

        call = decode if kind == "vae-decode" else lambda x: vae.encode(x).latent_dist.mode()
        return call, contextlib.nullcontext(), [vae], None

    import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion as svd_module
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder").eval()
    processor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
    size = encoder.config.image_size

    def encode(image: torch.Tensor) -> torch.Tensor:  # the pipeline's _encode_image for an image
        resized = svd_module._resize_with_antialiasing(image, (size, size))
        pixels = processor(
            images=(resized + 1.0) / 2.0,
            do_normalize=True,
            do_center_crop=False,
            do_resize=False,
            do_rescale=False,
            return_tensors="pt",
        ).pixel_values
        return encoder(pixels).image_embeds

    call = encode if kind == "clip-encode" else lambda x: encoder(x).image_embeds
    return call, contextlib.nullcontext(), [encoder], size


def measure(
    library: str,
    case: str,
    source: str,
    size: int = 256,
    frames: int = 14,
    seed: int = 0,
    warmup_calls: int | None = None,
    output: str | None = None,
) -> dict:
    """Load one component with `library` from `source`, read its weights, time one call of `case`.

    warmup_calls: untimed calls before it (None: 0 for vae-decode, minutes per call; 1 otherwise).
    Returns load_s, seconds (the timed call), warmup_calls and the output's shape; writes the
    output to `output` (torch.save) for the comparison. The harness adds peak_rss_bytes.
    """
    import torch

    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    kind, chunk = parse_case(case)
    if library == "svd_core":  # import time is not load time
        import svd_core  # noqa: F401
    else:
        import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion  # noqa: F401
        import transformers  # noqa: F401
    start = time.perf_counter()
    build = _svd_core_call if library == "svd_core" else _diffusers_call
    call, context, modules, clip_size = build(kind, chunk, source)
    loaded = time.perf_counter()
    x = make_input(kind, size, frames, seed, clip_size or 224)
    if warmup_calls is None:
        warmup_calls = 0 if kind == "vae-decode" else 1
    with torch.no_grad(), context:
        for module in modules:  # every page of a mapped weight read before the clock starts
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.sum()
        for _ in range(warmup_calls):
            call(x)
        begin = time.perf_counter()
        out = call(x)
        seconds = time.perf_counter() - begin
    if output is not None:
        torch.save(out.float().contiguous(), output)
    return {
        "load_s": loaded - start,
        "seconds": seconds,
        "warmup_calls": warmup_calls,
        "output_shape": "x".join(map(str, out.shape)),
    }


# ---- the run -----------------------------------------------------------------------------------


def measure_kwargs(library: str, case: str, args: argparse.Namespace, output: str) -> dict:
    """measure's arguments for one library and case."""
    if library == "svd_core":
        source = str(official_path(args.cache, args.preset, "float32"))
    else:
        source = str(diffusers_path(args.cache, args.preset))
    return {
        "library": library,
        "case": case,
        "source": source,
        "size": args.size,
        "frames": args.frames,
        "seed": args.seed,
        "output": output,
    }


def compare(ours: str, theirs: str) -> dict:
    """max |ours - theirs| and that over max |theirs|, of two saved outputs of the same shape."""
    import torch

    a, b = torch.load(ours), torch.load(theirs)
    if a.shape != b.shape:
        raise common.BenchmarkError(
            f"outputs differ in shape: {tuple(a.shape)} and {tuple(b.shape)}"
        )
    error = float((a.double() - b.double()).abs().max())
    return {"max_abs_error": error, "max_rel_error": error / float(b.double().abs().max())}


def row_command(args: argparse.Namespace, case: str) -> str:
    """The command that measures one row again."""
    parts = ["python benchmarks/bench_components.py", f"--cases {case}"]
    defaults = {"runs": 3, "warmup": 1, "threads": 2, "size": 256, "frames": 14}
    defaults.update(preset="svd_xt", seed=0)
    for name, default in defaults.items():
        if getattr(args, name) != default:
            parts.append(f"--{name} {getattr(args, name)}")
    return " ".join(parts)


def run(args: argparse.Namespace, log=print) -> dict:
    """Measure every requested case with both libraries; return {case: row}."""
    make_weights(args.cache, args.preset, ("float32",), log=log)
    target = "benchmarks.bench_components:measure"
    rows = {}
    with tempfile.TemporaryDirectory(prefix="svd_core_bench_") as scratch:
        for case in args.cases:
            row = {"case": case, "command": row_command(args, case), "warmup": args.warmup}
            outputs = {}
            for library in LIBRARIES:
                outputs[library] = str(Path(scratch) / f"{case}-{library}.pt")
                kwargs = measure_kwargs(library, case, args, outputs[library])
                measured = common.repeat(
                    target, kwargs, args.runs, args.warmup, args.threads, timeout=3600
                )
                row[library] = {**measured["median"], "runs": measured["runs"]}
            row.update(compare(outputs["svd_core"], outputs["diffusers"]))
            ours, theirs = row["svd_core"], row["diffusers"]
            row["ratio_seconds"] = ours["seconds"] / theirs["seconds"]
            row["speedup"] = theirs["seconds"] / ours["seconds"]
            row["ratio_peak_rss"] = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
            rows[case] = row
            log(
                f"{case:20s}: svd_core {ours['seconds']:.3f} s, diffusers {theirs['seconds']:.3f} s "
                f"(ours / diffusers {row['ratio_seconds']:.3f}), peak "
                f"{ours['peak_rss_bytes'] / 2**30:.2f} / {theirs['peak_rss_bytes'] / 2**30:.2f} GiB, "
                f"max abs error {row['max_abs_error']:.3g}"
            )
    return rows


def render(data: dict) -> str:
    """The README section: one row per case, both libraries side by side."""
    gib = 2**30
    rows = sorted(data["rows"].values(), key=lambda r: (CASES + (r["case"],)).index(r["case"]))
    table = common.markdown_table(
        ["case", "svd_core s", "diffusers s", "ours / diffusers", "speed-up", "svd_core peak GiB",
         "diffusers peak GiB", "max abs error", "max rel error", "command"],
        [
            [r["case"], r["svd_core"]["seconds"], r["diffusers"]["seconds"], r["ratio_seconds"],
             r["speedup"], r["svd_core"]["peak_rss_bytes"] / gib,
             r["diffusers"]["peak_rss_bytes"] / gib, r["max_abs_error"], r["max_rel_error"],
             f"`{r['command']}`"]
            for r in rows
        ],
    )  # fmt: skip
    machine = data["machine"]
    loads = [
        run["load_average"]
        for r in rows
        for library in LIBRARIES
        for run in r[library]["runs"]
        if "load_average" in run
    ]
    busy = f", 1-minute load average {min(loads):.1f} to {max(loads):.1f}" if loads else ""
    return "\n".join(
        [
            f"Measured {data['date']} on {machine['cpu']} ({machine['usable_cores']} cores, "
            f"{machine['memory_gib']} GiB), torch {machine['packages']['torch']}, diffusers "
            f"{machine['packages']['diffusers']}, transformers {machine['packages']['transformers']}, "
            f"{machine['threads']} thread(s){busy}; preset {data['preset']}, random weights, float32, "
            f"batch 1, {data['size']}x{data['size']}, {data['frames']} frames; seconds: the median "
            "over fresh processes (3 after 1 warm-up unless the command says otherwise) of one "
            "call, after every weight was read once and (all but vae-decode) one untimed call; "
            "peak: the process's resident high-water mark "
            "(imports, weights and the call). Errors: max |svd_core - diffusers| on the same "
            "input, and that over max |diffusers|.",
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
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--size", type=int, default=256, help="image side, a multiple of 64")
    parser.add_argument("--frames", type=int, default=14, help="frames decoded")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--preset", default="svd_xt", choices=PRESETS)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        parser.error(
            f"need --runs >= 1, --warmup >= 0 and --threads >= 1, "
            f"got {args.runs}, {args.warmup} and {args.threads}"
        )
    if args.size < 64 or args.size % 64 or args.frames < 1:
        parser.error(
            f"need --size a multiple of 64 and --frames >= 1, got {args.size}, {args.frames}"
        )
    for case in args.cases:
        try:
            parse_case(case)
        except ValueError as error:
            parser.error(str(error))
    if args.render_only:
        return common.render_only(parser, SECTION, render, args)

    measured = run(args, log=functools.partial(print, flush=True))
    machine, date = common.machine_info(args.threads), common.today()
    path = common.results_path(machine, args.results_dir, args.machine, date)
    previous = common.read_results(path).get(SECTION, {})
    settings = {"preset": args.preset, "size": args.size, "frames": args.frames}
    if any(previous.get(key) != value for key, value in settings.items()):
        previous = {}  # rows of other settings do not belong in the same table
    data = {**settings, "rows": {**previous.get("rows", {}), **measured}}
    return common.publish(
        SECTION, data, render, machine, date, args.results_dir, args.machine, args.readme
    )


if __name__ == "__main__":
    main()
