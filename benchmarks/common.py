"""The benchmark harness: the machine, one measurement per fresh process, medians, results, tables.

A measurement is a function `measure(**kwargs) -> dict of numbers` in a module of benchmarks/.
`run_in_subprocess` runs it in a new Python process
(`python -m benchmarks.common benchmarks.module:function '{"kwarg": ...}'`), so every number comes
from a clean interpreter and the peak resident memory is that measurement's alone: the child adds its
own peak (the kernel's high-water mark, VmHWM) as `peak_rss_bytes` and the machine's 1-minute load
average when it started as `load_average` (timings on a busy machine are not comparable), and prints
the dict as one JSON line. `repeat` runs warm-ups and N measured runs and takes the median of every number.

Results go to `benchmarks/results/<machine>-<date>.json`, one key per benchmark, merged with what the
file already holds; each benchmark's section keeps the machine info it was measured with (thread
count, package versions), as two runs on the same machine and day may differ there. `update_readme`
puts a rendered table between markers in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
README = REPO_ROOT / "benchmarks" / "README.md"
RESULT_MARKER = "BENCHMARK_RESULT "
GB = 1e9  # results and tables use decimal gigabytes


class BenchmarkError(RuntimeError):
    """A measurement process that failed or printed no result."""


# ---- memory of this process --------------------------------------------------------------------


def _proc_status(field: str) -> int | None:
    """A `kB` field of /proc/self/status in bytes (Linux), or None where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident memory of this process now: anonymous and file-backed pages (mapped files count)."""
    value = _proc_status("VmRSS")
    return value if value is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The most resident memory this process has had (Linux VmHWM; getrusage elsewhere)."""
    value = _proc_status("VmHWM")
    if value is not None:
        return value
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# ---- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    """The machine and software a result was measured with; `threads` is what the children used."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_bytes()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
        "packages": {
            name: _version(name)
            for name in ("torch", "svd-core", "diffusers", "transformers", "safetensors")
        },
    }


def machine_slug(info: dict) -> str:
    """A file-name-safe machine name from the CPU model and core count, e.g. `amd-epyc-2cpu`."""
    words = re.sub(r"\(.*?\)|\b(processor|cpu|\d+-core)\b", " ", info["cpu"].lower())
    words = re.sub(r"[^a-z0-9]+", "-", words).strip("-") or "cpu"
    return f"{words}-{info['usable_cores']}cpu"


# ---- one measurement per process ---------------------------------------------------------------


def run_in_subprocess(
    target: str, kwargs: dict, threads: int = 1, timeout: float | None = None
) -> dict:
    """Run `target` ("benchmarks.module:function") with `kwargs` in a fresh Python process.

    The child uses `threads` torch threads, runs offline (HF_HUB_OFFLINE=1) and returns the
    function's dict plus `peak_rss_bytes`, the child's own peak resident memory in bytes.
    Raises BenchmarkError with the child's last output lines if it fails.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "benchmarks.common", target, json.dumps(kwargs), str(threads)]
    process = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout
    )
    results = [
        line[len(RESULT_MARKER) :]
        for line in process.stdout.splitlines()
        if line.startswith(RESULT_MARKER)
    ]
    if process.returncode != 0 or not results:
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-15:])
        raise BenchmarkError(
            f"measurement {target} {kwargs} failed (exit code {process.returncode}):\n{tail}"
        )
    return json.loads(results[-1])


def median_fields(runs: Sequence[dict]) -> dict:
    """The median of every numeric field over `runs` (other fields from the first run)."""
    if not runs:
        raise ValueError("median_fields needs at least one run, got none")
    summary = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[key] = statistics.median(run[key] for run in runs)
        else:
            summary[key] = value
    return summary


def repeat(
    target: str,
    kwargs: dict,
    runs: int = 3,
    warmup: int = 1,
    threads: int = 1,
    timeout: float | None = None,
) -> dict:
    """`warmup` discarded runs, then `runs` measured ones, each in its own process.

    Returns {"median": the median of every field, "runs": the measured runs}.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        run_in_subprocess(target, kwargs, threads, timeout)
    measured = [run_in_subprocess(target, kwargs, threads, timeout) for _ in range(runs)]
    return {"median": median_fields(measured), "runs": measured}


# ---- results and tables ------------------------------------------------------------------------


def today() -> str:
    """Today's date (UTC) as YYYY-MM-DD, the date part of result file names."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def results_path(
    machine: dict,
    results_dir: str | os.PathLike = RESULTS_DIR,
    slug: str | None = None,
    date: str | None = None,
) -> Path:
    """`<results_dir>/<slug>-<date>.json`; slug defaults to `machine_slug(machine)`, date to today."""
    return Path(results_dir) / f"{slug or machine_slug(machine)}-{date or today()}.json"


def read_results(path: str | os.PathLike) -> dict:
    """The benchmarks stored in a results file ({} if there is none yet)."""
    path = Path(path)
    return json.loads(path.read_text()).get("benchmarks", {}) if path.is_file() else {}


def write_results(
    name: str,
    data: dict,
    machine: dict,
    results_dir: str | os.PathLike = RESULTS_DIR,
    slug: str | None = None,
    date: str | None = None,
) -> Path:
    """Store `data` under key `name` of the results file (see `results_path`), keeping other keys.

    The section records `machine` (under "machine"), the file the date. Files written before
    sections had their own machine info hold one at the top level, for the sections without one:
    it is kept as it is. Returns the file's path.
    """
    date = date or today()
    path = results_path(machine, results_dir, slug, date)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored["date"] = date
    stored.setdefault("benchmarks", {})[name] = {**data, "machine": machine}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(stored, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; floats with 3 significant digits, everything else as str."""

    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, the header {len(header)}: {row}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_readme(section: str, text: str, readme: str | os.PathLike = README) -> None:
    """Put `text` between `<!-- section:begin -->` and `<!-- section:end -->` in the README.

    The markers are appended at the end the first time; everything outside them is left alone.
    """
    readme = Path(readme)
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    content = readme.read_text() if readme.is_file() else ""
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(content)


def render_stored(
    section: str,
    render: Callable[[dict], str],
    results_json: str | os.PathLike,
    readme: str | os.PathLike = README,
) -> dict:
    """Measure nothing: rewrite `section`'s README table from a results file; returns its data
    (the stored section with its machine info and the file's date).

    A section without machine info of its own (files written before sections had one) gets the
    file's. Raises ValueError, naming the sections the file holds, if `section` is not there.
    """
    stored = json.loads(Path(results_json).read_text())
    sections = stored.get("benchmarks", {})
    if section not in sections:
        raise ValueError(
            f"{results_json} holds no {section!r} results (it holds: "
            f"{', '.join(sections) or 'none'}); measure them first, or give a file that has them"
        )
    machine = sections[section].get("machine", stored.get("machine"))
    if machine is None:
        raise ValueError(f"{results_json}: the {section!r} results name no machine")
    data = {**sections[section], "machine": machine, "date": stored["date"]}
    update_readme(section, render(data), readme)
    return data


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every bench script shares: where results and the README table go, the results
    file's machine prefix, and --render-only (see `render_only`)."""
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--machine", default=None, help="results file name prefix (default: CPU)")
    parser.add_argument(
        "--render-only", type=Path, default=None, metavar="RESULTS_JSON",
        help="measure nothing: write the README table from this results file",
    )  # fmt: skip


def render_only(
    parser: argparse.ArgumentParser, section: str, render: Callable[[dict], str], args
) -> dict:
    """`render_stored` for a script's --render-only; a file without the section (or without
    machine info) is one line and exit code 2 through `parser.error`."""
    try:
        return render_stored(section, render, args.render_only, args.readme)
    except ValueError as error:
        parser.error(str(error))


def publish(
    section: str,
    data: dict,
    render: Callable[[dict], str],
    machine: dict,
    date: str,
    results_dir: str | os.PathLike = RESULTS_DIR,
    slug: str | None = None,
    readme: str | os.PathLike = README,
) -> dict:
    """Store `data` under `section` of the results file, rewrite the README table, say where both
    went; returns `data` with the machine and date added (what `render` saw)."""
    path = write_results(section, data, machine, results_dir, slug, date)
    data.update(machine=machine, date=date)
    update_readme(section, render(data), readme)
    print(f"results: {path}\nREADME:  {readme}")
    return data


# ---- the child process -------------------------------------------------------------------------


def _child_main(argv: list[str]) -> None:
    target, kwargs, threads = argv[0], json.loads(argv[1]), int(argv[2])
    import torch

    torch.set_num_threads(threads)
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
    result = function(**kwargs)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["load_average"] = load_before  # 1-minute load of the machine: others' work skews times
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
