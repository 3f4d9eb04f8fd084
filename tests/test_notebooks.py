"""The notebooks in notebooks/: each is committed executed, with its outputs and figures, and those
outputs are what its committed code gives; each runs top to bottom in a fresh kernel without an
error, draws every figure it shows, says which weights it used, and writes nothing into the
repository.

The notebooks run in memory exactly as notebooks/execute.py runs them for committing (the test
imports its `fresh_kernel` and `execute`): nbclient, a kernel of the Python that runs the tests,
one torch thread (OMP_NUM_THREADS=1; the notebooks take at most 2 threads, and the tiny networks
run many times faster on one thread of a busy machine than on two), in notebooks/.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import struct
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient.exceptions import CellExecutionError
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"


def _load_execute_script():
    """notebooks/execute.py as a module (notebooks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS_DIR / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute_script = _load_execute_script()
NOTEBOOKS = execute_script.NOTEBOOKS
RE_EXECUTE = ".venv/bin/python notebooks/execute.py"
SHIPPED_WEIGHTS = ROOT / "svd_core" / "weights" / "svd_core_tiny_demo.safetensors"
# Where a notebook could write by mistake: its own folder, the model card's, the shipped model's.
WATCHED = (NOTEBOOKS_DIR, ROOT / "weights", SHIPPED_WEIGHTS.parent)
# Two renderings of one figure count as the same picture when at most this share of their pixels
# differ by more than PIXEL_LEVELS (of 255) in a channel: the same code draws the same figure to
# the pixel on one machine, and a figure drawn from other numbers moves far more pixels than this.
PIXEL_SHARE = 0.002
PIXEL_LEVELS = 16


@pytest.fixture(scope="module")
def kernel_name():
    with execute_script.fresh_kernel() as name:
        yield name


def _repository_files() -> dict[str, float]:
    """Path -> modification time of every file under the WATCHED folders."""
    return {
        str(path): path.stat().st_mtime
        for folder in WATCHED
        for path in folder.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and ".ipynb_checkpoints" not in path.parts
    }


@pytest.fixture(scope="module", params=NOTEBOOKS)
def run(request, kernel_name):
    """Execute one notebook once: (name, the committed notebook, the executed copy, the error or
    None, the repository files before, the repository files after)."""
    name = request.param
    committed = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    executed = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    before = _repository_files()
    error = None
    try:
        execute_script.execute(executed, kernel_name)
    except CellExecutionError as caught:
        error = caught
    return name, committed, executed, error, before, _repository_files()


def _require_success(run) -> None:
    name, _, _, error, _, _ = run
    if error is not None:
        pytest.fail(f"{name} failed:\n{error}", pytrace=False)


def _code_cells(notebook) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]


def _text_outputs(cell) -> str:
    return "".join(
        out.get("text", "") for out in cell.get("outputs", []) if out.output_type == "stream"
    )


def _check_figures(name: str, notebook) -> None:
    """Every cell that calls plt.show() holds a PNG per call, and every table shown as Markdown
    renders."""
    for index, cell in _code_cells(notebook):
        kinds = [set(out.get("data", {})) for out in cell.outputs]
        if "plt.show()" in cell.source:
            pngs = sum("image/png" in kind for kind in kinds)
            assert pngs == cell.source.count("plt.show()"), f"{name} cell {index}: {pngs} figures"
        if "display(Markdown(" in cell.source:
            assert any("text/markdown" in kind for kind in kinds), f"{name} cell {index}"


def _png(encoded: str) -> bytes:
    png = base64.b64decode(encoded)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    return png


def _png_size(encoded: str) -> tuple[int, int]:
    """(width, height) of a base64 PNG, read from its IHDR header."""
    return struct.unpack(">II", _png(encoded)[16:24])


# The rows of the parity report (notebook 03) that name the installed libraries' versions: they
# follow the environment (a new diffusers on PyPI), not the notebook's code.
VERSION_ROW = re.compile(r"^\| (diffusers|transformers|torch) \| [^|]+ \|$", re.MULTILINE)


def _versionless(text: str) -> str:
    return VERSION_ROW.sub(r"| \1 | (version) |", text)


def _comparable(output) -> tuple:
    """What of one output must be the same in the committed notebook and in a fresh run: its kind,
    a stream's text, every text/* representation (text/plain, text/markdown, ...), which
    representations there are, and an image's size in pixels. One thing is normalised: the
    library versions in the parity report (VERSION_ROW). execute() already takes out the two
    things that vary from run to run (how a cell's prints are split into stream messages, and
    tqdm's warning about a missing ipywidgets, which names the path of the environment), and the
    outputs hold no timings, progress bars, addresses or temp paths. PNG bytes are compared apart
    (_moved_pixels)."""
    if output.output_type == "stream":
        return ("stream", output.name, _versionless(output.text))
    if output.output_type == "error":
        return ("error", output.ename, output.evalue)
    data = output.data
    texts = {
        kind: _versionless("".join(value) if isinstance(value, list) else value)
        for kind, value in data.items()
        if kind.startswith("text/")
    }
    size = _png_size(data["image/png"]) if "image/png" in data else None
    return (output.output_type, sorted(data), texts, size)


def _moved_pixels(committed: str, fresh: str) -> float:
    """The share of the pixels of two PNGs of one size that differ by more than PIXEL_LEVELS."""
    a, b = (
        np.asarray(Image.open(io.BytesIO(_png(encoded))).convert("RGBA"), dtype=np.int16)
        for encoded in (committed, fresh)
    )
    return float((np.abs(a - b) > PIXEL_LEVELS).any(axis=-1).mean())


def test_the_folder_holds_exactly_the_tested_notebooks():
    assert sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_valid_and_executed(name):
    """Committed as notebooks/execute.py writes it: every code cell run once, top to bottom, with
    its outputs and figures, and no execution timings."""
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = _code_cells(notebook)
    assert code, f"{name} has no code cells"
    counts = [cell.execution_count for _, cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{name}: execution counts {counts}, not 1 to {len(code)} in order; "
        f"execute it top to bottom: {RE_EXECUTE} {name}"
    )
    errors = [index for index, cell in code if any(o.output_type == "error" for o in cell.outputs)]
    assert not errors, f"{name}: code cells {errors} were committed with an error"
    _check_figures(name, notebook)
    timed = [
        index
        for index, cell in enumerate(notebook.cells)
        if set(cell.metadata) & set(execute_script.VOLATILE_CELL_METADATA)
    ]
    assert not timed, f"{name}: cells {timed} carry execution timings; {RE_EXECUTE} {name}"


def test_notebook_runs_top_to_bottom_without_error(run):
    _require_success(run)
    name, _, executed, _, _, _ = run
    errors = [
        out
        for cell in executed.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    assert not errors, f"{name}: error outputs {[(e.ename, e.evalue) for e in errors]}"
    assert all(cell.execution_count is not None for _, cell in _code_cells(executed)), (
        f"{name}: some code cells did not run"
    )


def test_notebook_committed_outputs_are_those_of_its_code(run):
    """A fresh run gives, cell by cell, the outputs committed: the same kinds in the same order,
    the same text, images of the same size that show the same picture. Fails when a cell (or code
    it calls) was changed and the notebook not re-executed, and when its outputs were cleared."""
    _require_success(run)
    name, committed, executed, _, _, _ = run
    hint = f"the committed outputs are stale; re-execute: {RE_EXECUTE} {name}"
    for (index, old), (_, new) in zip(_code_cells(committed), _code_cells(executed), strict=True):
        assert [_comparable(o) for o in old.outputs] == [_comparable(o) for o in new.outputs], (
            f"{name} cell {index}: {hint}"
        )
        for out_index, (a, b) in enumerate(zip(old.outputs, new.outputs, strict=True)):
            if "image/png" in a.get("data", {}):
                moved = _moved_pixels(a.data["image/png"], b.data["image/png"])
                assert moved <= PIXEL_SHARE, (
                    f"{name} cell {index}, output {out_index}: another picture ({moved:.1%} of "
                    f"its pixels changed); {hint}"
                )


def test_notebook_draws_every_figure_it_shows(run):
    _require_success(run)
    name, _, executed, _, _, _ = run
    _check_figures(name, executed)


def test_notebook_says_which_weights_it_used(run):
    """With svd_core/weights/svd_core_tiny_demo.safetensors present the notebook loads it and says
    so; without it, it says plainly that its weights are random."""
    _require_success(run)
    name, _, executed, _, _, _ = run
    printed = "".join(_text_outputs(cell) for _, cell in _code_cells(executed))
    if SHIPPED_WEIGHTS.is_file():
        shipped = SHIPPED_WEIGHTS.relative_to(ROOT).as_posix()
        assert f"Loaded the shipped model {shipped}" in printed, name
        assert "RANDOM" not in printed, name
    else:
        assert "does not exist yet" in printed and "RANDOM" in printed, name


def test_notebook_writes_nothing_into_the_repository(run):
    _require_success(run)
    name, _, _, _, before, after = run
    folders = ", ".join(f"{folder.relative_to(ROOT)}/" for folder in WATCHED)
    assert after == before, f"{name} changed files under {folders}"
