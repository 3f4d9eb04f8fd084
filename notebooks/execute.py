"""Execute the notebooks in place and write them back with their outputs and figures.

    .venv/bin/python notebooks/execute.py                    # all three
    .venv/bin/python notebooks/execute.py 02_sampling.ipynb  # or the ones named

Each notebook runs as tests/test_notebooks.py runs it (the test imports `fresh_kernel` and
`execute` from here): in a fresh kernel of the Python that runs this script (sys.executable, not
whatever `python3` kernel the machine has installed), with one torch thread (OMP_NUM_THREADS=1),
in notebooks/. What changes from one run or machine to the next is left out of the file, so that
a re-run changes as little as possible: no execution timings in the cell metadata, the kernel's
language_info reduced to its name (it carries the Python version), the stream outputs of a cell
merged into one per stream (how prints are split into messages depends on timing), and no warning
from tqdm that ipywidgets is missing (it names the path of the environment; with ipywidgets
installed there is none).

A notebook whose run fails is left as it was; the script then exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode

NOTEBOOKS_DIR = Path(__file__).resolve().parent
NOTEBOOKS = ("01_architecture_tour.ipynb", "02_sampling.ipynb", "03_parity.ipynb")
# Seconds per cell. The slowest cell (the parity run) takes about 25 s on one busy CPU core; a cell
# that hangs fails instead of blocking.
CELL_TIMEOUT = 300
KERNEL_NAME = "svd-core-notebooks"
# Cell metadata that records a run rather than the notebook (nbclient's and JupyterLab's timings).
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime")
# The kernel's environment: one torch thread, and without the warning that tqdm.auto (svd_core's
# and diffusers' progress bars) gives at import in a kernel without ipywidgets.
KERNEL_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore:IProgress not found"}


@contextmanager
def fresh_kernel() -> Iterator[str]:
    """The name of a Jupyter kernel spec for this interpreter (with KERNEL_ENV), found first via
    JUPYTER_PATH, which is restored on exit."""
    saved = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="svd_core_jupyter_") as data_dir:
        spec_dir = Path(data_dir) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "svd_core notebooks",
            "language": "python",
            "env": KERNEL_ENV,
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        os.environ["JUPYTER_PATH"] = data_dir
        try:
            yield KERNEL_NAME
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved


def execute(notebook: NotebookNode, kernel_name: str) -> NotebookNode:
    """Run every code cell of `notebook` top to bottom, in place, in notebooks/, and return it in
    the form it is committed in. Raises nbclient's CellExecutionError at the first failing cell."""
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # run where a reader runs it
        record_timing=False,
        coalesce_streams=True,
    ).execute()
    notebook.metadata["language_info"] = {"name": "python"}
    for cell in notebook.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
    return notebook


def png_count(notebook: NotebookNode) -> int:
    """How many PNG figures the notebook's outputs hold."""
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"notebooks in notebooks/ (default: {NOTEBOOKS})"
    )
    names = parser.parse_args(argv).names or NOTEBOOKS
    paths = [NOTEBOOKS_DIR / Path(name).with_suffix(".ipynb").name for name in names]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    with fresh_kernel() as kernel_name:
        for path in paths:
            notebook = nbformat.read(path, as_version=4)
            start = time.perf_counter()
            try:
                execute(notebook, kernel_name)
            except CellExecutionError as error:
                print(f"{path.name} failed, left as it was:\n{error}", file=sys.stderr)
                return 1
            # written beside it, then renamed: an interrupt never leaves half a notebook
            temporary = path.with_name(f".{path.name}.tmp")
            nbformat.write(notebook, temporary)
            os.replace(temporary, path)
            print(
                f"{path.name}: {png_count(notebook)} figures, {path.stat().st_size / 1e3:.0f} kB, "
                f"ran in {time.perf_counter() - start:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
