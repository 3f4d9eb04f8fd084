"""What a parity run measured and how it reads: error metrics, the first-jump rule, the report.

Metrics, for svd_core's tensor `ours` and the reference's `ref` of the same shape, in float64:

- max abs error  max |ours - ref|
- relative error max |ours - ref| / max |ref|  (what the tolerances bound; 0/0 counts as 0)
- cosine         <ours, ref> / (|ours| |ref|) over all elements (1 for two zero tensors)
- PSNR           10 log10(1 / mean (ours - ref)^2), for videos with values in [0, 1]

The first jump of a component: walking its blocks in svd_core's execution order, the first block
whose relative error exceeds both a floor (FLOOR_FRACTION x the component's tolerance) and
JUMP_FACTOR x the median relative error of the blocks before it. Errors that merely accumulate
through a network grow slowly and stay under the floor; a block that computes something else (a
changed weight, another epsilon, a different formula) jumps at once. Blocks feed on their own
network's activations, so the first jump is where a difference starts, and every block after it
inherits it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

JUMP_FACTOR = 10.0  # a block jumps when its error exceeds this multiple of the preceding median
FLOOR_FRACTION = 0.1  # ... and this fraction of the component's tolerance
REPORT_SUFFIXES = (".md", ".json")


@dataclass(frozen=True)
class Comparison:
    """One pair of tensors compared: svd_core's (`ours`) and the reference's (`theirs`)."""

    ours: str  # what was compared on our side: a module path or a stage name
    theirs: str  # its counterpart in the reference
    max_abs: float
    relative: float
    cosine: float
    shape: tuple[int, ...]
    note: str = ""  # how the layouts were matched, when they differ

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "ours": self.ours,
            "theirs": self.theirs,
            "max_abs": _number(self.max_abs),
            "relative": _number(self.relative),
            "cosine": _number(self.cosine),
            "shape": list(self.shape),
            "note": self.note,
        }


def compare(ours_name: str, theirs_name: str, ours, theirs, note: str = "") -> Comparison:
    """Compare two tensors of one shape (anything torch.as_tensor takes), in float64 on the CPU."""
    a = torch.as_tensor(ours).detach().to("cpu", torch.float64)
    b = torch.as_tensor(theirs).detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"cannot compare {ours_name!r} of shape {tuple(a.shape)} with {theirs_name!r} of "
            f"shape {tuple(b.shape)}"
        )
    if a.numel() == 0:
        return Comparison(ours_name, theirs_name, 0.0, 0.0, 1.0, tuple(a.shape), note)
    max_abs = (a - b).abs().max().item()
    scale = b.abs().max().item()
    if scale > 0:
        relative = max_abs / scale
    else:
        relative = 0.0 if max_abs == 0 else math.inf
    norms = a.norm().item() * b.norm().item()
    if norms > 0:
        cosine = (a.flatten() @ b.flatten()).item() / norms
    else:
        cosine = 1.0 if a.norm().item() == b.norm().item() else 0.0
    return Comparison(ours_name, theirs_name, max_abs, relative, cosine, tuple(a.shape), note)


def psnr(ours, theirs, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two videos with values in [0, peak]; inf if equal."""
    a = torch.as_tensor(ours).detach().to("cpu", torch.float64)
    b = torch.as_tensor(theirs).detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a - b).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def first_jump(rows: list[Comparison], floor: float) -> int | None:
    """Index of the first row whose relative error jumps (module docstring), or None."""
    for index, row in enumerate(rows):
        if not math.isfinite(row.relative):
            return index
        before = [r.relative for r in rows[:index]]
        baseline = statistics.median(before) if before else 0.0
        if row.relative > max(floor, JUMP_FACTOR * baseline):
            return index
    return None


@dataclass
class ComponentResult:
    """The comparison of one component: its output, and its blocks (or stages) in running order."""

    name: str
    output: Comparison
    tolerance: float = math.inf  # bound on output.relative
    blocks: list[Comparison] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (our block, why)
    psnr: float | None = None  # dB, for the video of the sampling run
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the output's relative error is finite and within the tolerance."""
        return math.isfinite(self.output.relative) and self.output.relative <= self.tolerance

    @property
    def first_divergence(self) -> Comparison | None:
        """The block where the error first jumps (module docstring), or None."""
        index = first_jump(self.blocks, FLOOR_FRACTION * self.tolerance)
        return None if index is None else self.blocks[index]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        jump = self.first_divergence
        return {
            "name": self.name,
            "passed": self.passed,
            "tolerance": _number(self.tolerance),
            "output": self.output.to_dict(),
            "psnr_db": None if self.psnr is None else _number(self.psnr),
            "first_divergence": None if jump is None else jump.ours,
            "seconds": round(self.seconds, 3),
            "blocks": [block.to_dict() for block in self.blocks],
            "skipped": [{"ours": name, "reason": why} for name, why in self.skipped],
        }


@dataclass(frozen=True)
class KnownDifference:
    """A documented numerical difference between the official code and diffusers, measured."""

    name: str
    official: str  # what sgm does
    diffusers: str  # what diffusers does
    measured: str  # its size, measured live
    switch: str  # what numerics="diffusers" changes on our side

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class ParityReport:
    """The result of `run_parity`: a header (versions, device, settings) and one entry per component.

    `passed` is True when every component is within its tolerance. `to_markdown()` and `to_json()`
    render it; `save(path)` writes either, by the suffix (.md or .json).
    """

    header: dict[str, str]
    components: list[ComponentResult]
    known_differences: list[KnownDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how to read this run (numerics, dtypes)

    @property
    def passed(self) -> bool:
        """True when there is at least one component and all are within their tolerances."""
        return bool(self.components) and all(c.passed for c in self.components)

    def component(self, name: str) -> ComponentResult:
        """The result of the component called `name`."""
        for result in self.components:
            if result.name == name:
                return result
        raise KeyError(f"no component {name!r}; the report has {[c.name for c in self.components]}")

    # ---- rendering ---------------------------------------------------------------------------

    def to_markdown(self, blocks: bool = True) -> str:
        """The report as Markdown: header, summary table, and (blocks=True) a table per component."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"# svd-core parity: {verdict}", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in self.header.items()]
        lines += ["", "## Components", ""]
        lines.append(
            "| component | max abs err | rel err | cosine | PSNR | tolerance | result | first jump |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for c in self.components:
            jump = c.first_divergence
            lines.append(
                f"| {c.name} | {_sci(c.output.max_abs)} | {_sci(c.output.relative)} | "
                f"{_cos(c.output.cosine)} | {_db(c.psnr)} | {_sci(c.tolerance)} | "
                f"{'pass' if c.passed else '**FAIL**'} | {'-' if jump is None else f'`{jump.ours}`'} |"
            )
        lines += [
            "",
            "rel err = max |ours - ref| / max |ref|; first jump = the first block, in svd_core's "
            f"running order, whose rel err exceeds {FLOOR_FRACTION:g} x the tolerance and "
            f"{JUMP_FACTOR:g} x the median of the blocks before it.",
        ]
        lines += [f"\n{note}" for note in self.notes]
        if self.known_differences:
            lines += ["", "## Known differences between the references (measured)", ""]
            lines += ["| difference | official (sgm) | diffusers | measured | numerics=diffusers |"]
            lines += ["|---|---|---|---|---|"]
            for d in self.known_differences:
                lines.append(
                    f"| {d.name} | {d.official} | {d.diffusers} | {d.measured} | {d.switch} |"
                )
        if blocks:
            for c in self.components:
                lines += ["", *self._component_markdown(c)]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _component_markdown(c: ComponentResult) -> list[str]:
        jump = c.first_divergence
        lines = [f"## {c.name} ({c.seconds:.1f} s)", ""]
        lines.append(
            f"output: `{c.output.ours}` vs `{c.output.theirs}`, shape {list(c.output.shape)}"
        )
        if not c.blocks:
            return lines
        lines += ["", "| # | svd_core | reference | max abs err | rel err | cosine | note |"]
        lines.append("|---|---|---|---|---|---|---|")
        for index, b in enumerate(c.blocks):
            name = f"**`{b.ours}`** (first jump)" if b is jump else f"`{b.ours}`"
            lines.append(
                f"| {index} | {name} | `{b.theirs}` | {_sci(b.max_abs)} | {_sci(b.relative)} | "
                f"{_cos(b.cosine)} | {b.note} |"
            )
        if c.skipped:
            lines += ["", "Not compared:", ""]
            lines += [f"- `{name}`: {why}" for name, why in c.skipped]
        return lines

    def to_json(self) -> str:
        """The report as JSON text (non-finite numbers as the strings "inf" and "nan")."""
        data = {
            "passed": self.passed,
            "header": self.header,
            "definitions": {
                "relative": "max |ours - ref| / max |ref|",
                "first_divergence": f"first block whose relative error exceeds {FLOOR_FRACTION:g} "
                f"x tolerance and {JUMP_FACTOR:g} x the median of the blocks before it",
            },
            "notes": self.notes,
            "components": [c.to_dict() for c in self.components],
            "known_differences": [d.to_dict() for d in self.known_differences],
        }
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the report to `path`: Markdown for .md, JSON for .json, atomically."""
        from ..io import atomic_file

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in REPORT_SUFFIXES:
            raise ValueError(f"report {str(path)!r}: use a .md or .json file name")
        text = self.to_markdown() if suffix == ".md" else self.to_json()
        with atomic_file(path, suffix=suffix) as temporary:
            Path(temporary).write_text(text)
        return path


def _number(value: float) -> float | str:
    """JSON has no inf or nan: those become strings."""
    return value if math.isfinite(value) else str(value)


def _sci(value: float) -> str:
    if value == 0:
        return "0"  # exact agreement, worth seeing at a glance
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def _cos(value: float) -> str:
    return f"{value:.8f}" if math.isfinite(value) else str(value)


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} dB" if math.isfinite(value) else "inf (identical)"
