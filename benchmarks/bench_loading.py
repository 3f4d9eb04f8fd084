"""Loading a full-size checkpoint: time and peak resident memory, svd_core against diffusers.

    python benchmarks/bench_loading.py [--runs 3] [--warmup 1]
                                       [--dtypes float16 float32 float32-to-float16]
                                       [--loaders svd_core-official svd_core-diffusers diffusers]
                                       [--cache DIR] [--preset svd_xt] [--threads 1]

First writes the random checkpoint if it is missing (make_weights.py: the official single file and
the diffusers folder, float16 and float32). Then, for each case, each loader in its own fresh
process (--warmup runs, then --runs measured runs; medians reported):

- svd_core-official:  `svd_core.load(<preset>_fp16.safetensors, dtype=...)`
- svd_core-diffusers: `svd_core.load(diffusers/, dtype=..., variant=...)` (the files diffusers reads)
- diffusers:          `StableVideoDiffusionPipeline.from_pretrained(diffusers/, torch_dtype=...,
                      variant=...)`

The cases "float16" and "float32" load each file in its own dtype; "float32-to-float16" loads the
float32 file as float16 (converting on the way, as one does with the official float32 files).
Measured: `load_s` (the call), `ready_s` (the call plus reading every weight once: a loader that
leaves tensors on a memory-mapped file pays for the disk reads only then), the peak resident
memory of the process over both (`peak_rss_bytes`; pages of a memory-mapped file count once
touched) and the bytes of the loaded weights (parameters and buffers of the UNet, the VAE and the
image encoder). Two ratios: the raw `peak / weights` (the target, issue 9: at most 1.2)
and `(peak - baseline) / weights`, where the baseline is the resident memory after the imports. Two
more processes measure that baseline alone: `import torch, svd_core` and `import torch, diffusers`.
The page cache is warm after the warm-up: these are not cold-disk numbers.

Results go to benchmarks/results/<machine>-<date>.json (key "loading", rows merged by name) and the
table to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `svd_core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.make_weights import (  # noqa: E402
    DEFAULT_CACHE,
    DTYPES,
    PRESETS,
    diffusers_path,
    make_weights,
    official_path,
    variant,
)

LOADERS = ("svd_core-official", "svd_core-diffusers", "diffusers")
# A case is a file dtype (loaded as itself) or "<file dtype>-to-<load dtype>".
CASES = ("float16", "float32", "float32-to-float16")
LIBRARIES = ("svd_core", "diffusers")
TARGET_RATIO = 1.2  # issue 9: peak RSS at most 1.2x the bytes of the weights loaded
SECTION = "loading"


# ---- measurements (each runs in a fresh process, through common.run_in_subprocess) -------------


def _import(library: str):
    if library == "svd_core":
        import svd_core

        return svd_core
    if library == "diffusers":
        import diffusers

        diffusers.StableVideoDiffusionPipeline  # noqa: B018 - diffusers imports lazily: import it all now
        return diffusers
    raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")


def measure_imports(library: str) -> dict:
    """The baseline: resident memory of a process that imported torch and `library`, nothing else."""
    _import(library)
    return {"rss_bytes": common.current_rss_bytes()}


def measure_load(library: str, source: str, dtype: str, variant: str | None = None) -> dict:
    """Load a checkpoint with `library` in `dtype`, then read every weight once; times and memory.

    Returns load_s, ready_s (load plus one read of every weight), baseline_rss_bytes (after the
    imports), peak_after_load_bytes, weight_bytes and num_tensors. The harness adds peak_rss_bytes.
    """
    import torch

    torch_dtype = DTYPES[dtype][0]
    package = _import(library)
    baseline = common.current_rss_bytes()
    start = time.perf_counter()
    if library == "svd_core":
        model = package.load(source, dtype=torch_dtype, variant=variant)
        modules = [model.unet, model.vae, model.image_encoder]
    else:
        pipe = package.StableVideoDiffusionPipeline.from_pretrained(
            source, torch_dtype=torch_dtype, variant=variant
        )
        modules = [pipe.unet, pipe.vae, pipe.image_encoder]
    loaded = time.perf_counter()
    peak_after_load = common.peak_rss_bytes()
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}.values()
    with torch.no_grad():
        for tensor in tensors:  # reads every byte: pages of a mapped file become resident here
            tensor.sum()
    ready = time.perf_counter()
    loaded_dtypes = sorted({str(t.dtype) for t in tensors if t.is_floating_point()})
    return {
        "load_s": loaded - start,
        "ready_s": ready - start,
        "baseline_rss_bytes": baseline,
        "peak_after_load_bytes": peak_after_load,
        "weight_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "num_tensors": len(tensors),
        "loaded_dtypes": ",".join(loaded_dtypes),
    }


# ---- the run -----------------------------------------------------------------------------------


def parse_case(case: str) -> tuple[str, str]:
    """(file dtype, load dtype) of a case: "float16" -> both float16; "float32-to-float16"."""
    file_dtype, _, load_dtype = case.partition("-to-")
    if file_dtype not in DTYPES or (load_dtype or file_dtype) not in DTYPES:
        raise ValueError(
            f"a case is a dtype or '<dtype>-to-<dtype>' of {sorted(DTYPES)}, got {case!r}"
        )
    return file_dtype, load_dtype or file_dtype


def loader_kwargs(loader: str, case: str, cache: Path, preset: str) -> dict:
    """measure_load's arguments for one row."""
    file_dtype, dtype = parse_case(case)
    if loader == "svd_core-official":
        source = str(official_path(cache, preset, file_dtype))
        return {"library": "svd_core", "source": source, "dtype": dtype}
    library = "svd_core" if loader == "svd_core-diffusers" else "diffusers"
    folder = str(diffusers_path(cache, preset))
    return {"library": library, "source": folder, "dtype": dtype, "variant": variant(file_dtype)}


def row_command(args: argparse.Namespace, case: str, loader: str) -> str:
    """The command that measures one row again."""
    parts = ["python benchmarks/bench_loading.py", f"--dtypes {case}", f"--loaders {loader}"]
    if args.runs != 3:
        parts.append(f"--runs {args.runs}")
    if args.warmup != 1:
        parts.append(f"--warmup {args.warmup}")
    if args.preset != "svd_xt":
        parts.append(f"--preset {args.preset}")
    return " ".join(parts)


def summarize(measured: dict) -> dict:
    """Add the two ratios to a row's medians."""
    median = dict(measured["median"])
    median["ratio_peak_to_weights"] = median["peak_rss_bytes"] / median["weight_bytes"]
    median["ratio_over_baseline"] = (
        median["peak_rss_bytes"] - median["baseline_rss_bytes"]
    ) / median["weight_bytes"]
    return median


def run(args: argparse.Namespace, log=print) -> dict:
    """Measure every requested row; return {"baselines": ..., "rows": ...} (rows keyed by name)."""
    file_dtypes = tuple(sorted({parse_case(case)[0] for case in args.dtypes}))
    make_weights(args.cache, args.preset, file_dtypes, log=log)
    target = "benchmarks.bench_loading:"
    libraries = sorted({"diffusers" if x == "diffusers" else "svd_core" for x in args.loaders})
    baselines = {}
    for library in libraries:
        measured = common.repeat(
            target + "measure_imports", {"library": library}, args.runs, 0, args.threads
        )
        baselines[library] = {**measured["median"], "runs": measured["runs"]}
        log(f"baseline {library}: {measured['median']['rss_bytes'] / common.GB:.3f} GB")
    rows = {}
    for case in args.dtypes:
        for loader in args.loaders:
            kwargs = loader_kwargs(loader, case, args.cache, args.preset)
            measured = common.repeat(
                target + "measure_load", kwargs, args.runs, args.warmup, args.threads, timeout=3600
            )
            row = summarize(measured)
            row.update(loader=loader, case=case, command=row_command(args, case, loader))
            row["warmup"] = args.warmup
            row["runs"] = measured["runs"]
            rows[f"{loader}-{case}"] = row
            log(
                f"{loader:18s} {case:18s}: load {row['load_s']:.2f} s, ready {row['ready_s']:.2f} s, "
                f"peak {row['peak_rss_bytes'] / common.GB:.2f} GB = "
                f"{row['ratio_peak_to_weights']:.3f} x weights"
            )
    return {"baselines": baselines, "rows": rows}


def _case_label(case: str) -> str:
    file_dtype, load_dtype = parse_case(case)
    return f"{file_dtype} → {load_dtype}"


def render(data: dict) -> str:
    """The README section: the rows table and the svd_core / diffusers ratios."""
    gb = common.GB
    order = {name: i for i, name in enumerate(LOADERS)}
    rows = sorted(
        data["rows"].values(),
        key=lambda r: (
            CASES.index(r["case"]) if r["case"] in CASES else 9,
            order.get(r["loader"], 9),
        ),
    )
    table = common.markdown_table(
        ["loader", "file → loaded dtype", "weights GB", "load s", "ready s", "peak RSS GB", "peak / weights",
         "(peak - baseline) / weights", "command"],
        [
            [r["loader"], _case_label(r["case"]), r["weight_bytes"] / gb, r["load_s"], r["ready_s"],
             r["peak_rss_bytes"] / gb, r["ratio_peak_to_weights"], r["ratio_over_baseline"],
             f"`{r['command']}`"]
            for r in rows
        ],
    )  # fmt: skip
    ratios = []
    for ours in ("svd_core-diffusers", "svd_core-official"):
        for case in CASES:
            a, b = data["rows"].get(f"{ours}-{case}"), data["rows"].get(f"diffusers-{case}")
            if a and b:
                ratios.append(
                    [f"{ours} / diffusers", _case_label(case), a["load_s"] / b["load_s"],
                     a["ready_s"] / b["ready_s"], a["peak_rss_bytes"] / b["peak_rss_bytes"]]
                )  # fmt: skip
    ratio_table = common.markdown_table(
        ["ratio", "file → loaded dtype", "load s", "ready s", "peak RSS"], ratios
    )
    baselines = ", ".join(
        f"`import torch, {lib}` {b['rss_bytes'] / gb:.2f} GB"
        for lib, b in sorted(data["baselines"].items())
    )
    machine = data["machine"]
    loads = [run["load_average"] for r in rows for run in r["runs"] if "load_average" in run]
    busy = (
        f", the machine's 1-minute load average {min(loads):.1f} to {max(loads):.1f}"
        if loads
        else ""
    )
    return "\n".join(
        [
            f"Measured {data['date']} on {machine['cpu']} ({machine['usable_cores']} cores, "
            f"{machine['memory_gib']} GiB), torch {machine['packages']['torch']}, "
            f"diffusers {machine['packages']['diffusers']}, {machine['threads']} thread(s){busy}; "
            f"preset {data['preset']}; each row the median of its runs in fresh processes (3 after "
            f"1 warm-up unless its command says otherwise), warm page cache. Resident memory "
            f"after the imports alone: {baselines}. Target: peak / weights at most "
            f"{TARGET_RATIO} (the raw ratio).",
            "",
            table,
            "",
            "Ratios (below 1: svd_core is faster or smaller):",
            "",
            ratio_table,
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--loaders", nargs="+", default=list(LOADERS), choices=LOADERS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--preset", default="svd_xt", choices=PRESETS)
    parser.add_argument("--threads", type=int, default=1)
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error(f"need --runs >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    if args.render_only:
        return common.render_only(parser, SECTION, render, args)

    measured = run(args, log=functools.partial(print, flush=True))
    machine, date = common.machine_info(args.threads), common.today()
    path = common.results_path(machine, args.results_dir, args.machine, date)
    previous = common.read_results(path).get(SECTION, {})
    if previous.get("preset") != args.preset:
        previous = {}  # rows of another preset do not belong in the same table
    data = {
        "preset": args.preset,
        "target_ratio_peak_to_weights": TARGET_RATIO,
        "baselines": {**previous.get("baselines", {}), **measured["baselines"]},
        "rows": {**previous.get("rows", {}), **measured["rows"]},
    }
    return common.publish(
        SECTION, data, render, machine, date, args.results_dir, args.machine, args.readme
    )


if __name__ == "__main__":
    main()
