"""The notebooks in notebooks/: each runs top to bottom in a fresh kernel without an error, draws
every figure it shows, says which weights it used, writes nothing into the repository, and is
committed with its outputs cleared.

The notebooks run in memory (nbclient), in a kernel of the Python that runs the tests, with one
torch thread (OMP_NUM_THREADS=1; the notebooks take at most 2 threads, and the tiny networks run
many times faster on one thread of a busy machine than on two).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_architecture_tour.ipynb", "02_sampling.ipynb", "03_parity.ipynb")
SHIPPED_WEIGHTS = ROOT / "weights" / "svd_core_tiny_demo.safetensors"
# Seconds per cell. The slowest cell (the parity run) takes about 25 s on one busy CPU core; a cell
# that hangs fails the test instead of blocking the suite.
CELL_TIMEOUT = 300
KERNEL_NAME = "svd-core-tests"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A Jupyter kernel spec for this interpreter (sys.executable), found first via JUPYTER_PATH,
    so that the notebooks never run in whatever `python3` kernel the machine has installed."""
    data_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = data_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "svd_core tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(data_dir))
        patch.setenv("OMP_NUM_THREADS", "1")
        yield KERNEL_NAME


def _repository_files() -> dict[str, float]:
    """Path -> modification time of every file under notebooks/ and weights/."""
    return {
        str(path): path.stat().st_mtime
        for folder in (NOTEBOOKS_DIR, ROOT / "weights")
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
    client = NotebookClient(
        executed,
        timeout=CELL_TIMEOUT,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # run where a reader runs it
    )
    before = _repository_files()
    error = None
    try:
        client.execute()
    except CellExecutionError as caught:
        error = caught
    return name, committed, executed, error, before, _repository_files()


def _require_success(run) -> None:
    name, _, _, error, _, _ = run
    if error is not None:
        pytest.fail(f"{name} failed:\n{error}", pytrace=False)


def _text_outputs(cell) -> str:
    return "".join(
        out.get("text", "") for out in cell.get("outputs", []) if out.output_type == "stream"
    )


def test_the_folder_holds_exactly_the_tested_notebooks():
    assert sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_valid_and_with_outputs_cleared(name):
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"{name}: code cells {dirty} were committed with outputs; clear them"


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
    assert all(
        cell.execution_count is not None for cell in executed.cells if cell.cell_type == "code"
    ), f"{name}: some code cells did not run"


def test_notebook_draws_every_figure_it_shows(run):
    """Every cell that calls plt.show() leaves a PNG, and every table shown as Markdown renders."""
    _require_success(run)
    name, _, executed, _, _, _ = run
    for index, cell in enumerate(executed.cells):
        if cell.cell_type != "code":
            continue
        kinds = [set(out.get("data", {})) for out in cell.outputs]
        if "plt.show()" in cell.source:
            pngs = sum("image/png" in kind for kind in kinds)
            assert pngs == cell.source.count("plt.show()"), f"{name} cell {index}: {pngs} figures"
        if "display(Markdown(" in cell.source:
            assert any("text/markdown" in kind for kind in kinds), f"{name} cell {index}"


def test_notebook_says_which_weights_it_used(run):
    """With weights/svd_core_tiny_demo.safetensors present the notebook loads it and says so;
    without it, it says plainly that its weights are random."""
    _require_success(run)
    name, _, executed, _, _, _ = run
    printed = "".join(_text_outputs(cell) for cell in executed.cells if cell.cell_type == "code")
    if SHIPPED_WEIGHTS.is_file():
        assert "Loaded the shipped model weights/svd_core_tiny_demo.safetensors" in printed, name
        assert "RANDOM" not in printed, name
    else:
        assert "does not exist yet" in printed and "RANDOM" in printed, name


def test_notebook_writes_nothing_into_the_repository(run):
    _require_success(run)
    name, _, _, _, before, after = run
    assert after == before, f"{name} changed files under notebooks/ or weights/"
