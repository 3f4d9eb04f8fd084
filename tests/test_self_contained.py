"""The repository is self-contained: no tracked file reads a path above the repository's root.

A user clones the project into a folder with nothing beside it, so a test or script that reaches
for `../something` works only on the machines of the people who had that folder. What the tests
need (the official key list, tests/data/) is committed inside. This test reads every tracked code
file as text and finds the three ways a path climbs out of the repository:

- `Path(__file__).resolve().parents[N]` with N above the file's depth below the root;
- `Path(__file__)....parent.parent...` with more `.parent`s than that;
- a `..` path segment: relative to the working directory (the root, where the suite runs) it
  always climbs out; after the script's own folder (`"$(dirname "$0")/.."`) it may climb as many
  levels as the file lies below the root.

`.ci/run` proves the same from the other side: it runs the suite in a fresh clone inside a new
temporary folder, with nothing beside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".sh", ".toml", ".ipynb", ".cfg", ".ini", ".yaml", ".yml", ".json", ".txt"}
CODE_NAMES = {"run", "Makefile"}  # .ci/run

PARENTS_INDEX = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")
PARENT_CHAIN = re.compile(r"__file__\)(?:\.resolve\(\))?((?:\.parent)+)")
# A run of ".." path segments beside a slash ("../x", "x/..", "../../x"; not `from .. import`);
# after `)/` (as in `"$(dirname "$0")/.."`) it is relative to the file's folder, anywhere else to
# the working directory (the root, for the suite).
DOTDOT_RUN = re.compile(r"(?<=/)\.\.(?:/\.\.)*(?![\w.])|(?<![\w./])\.\.(?:/\.\.)*(?=/)")


def tracked_code_files() -> list[Path]:
    """The files git tracks (a checkout), or every file below the root (an unpacked archive)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout.split("\0")
        paths = [ROOT / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [p for p in paths if p.is_file() and (p.suffix in CODE_SUFFIXES or p.name in CODE_NAMES)]


def escapes(relative: Path, text: str) -> list[str]:
    """The places in `text` (the file at `relative` below the root) that name a path above the root."""
    depth = len(relative.parts) - 1  # folders between the root and the file
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in PARENTS_INDEX.finditer(line):
            if int(match.group(1)) > depth:  # parents[depth] is the root itself
                found.append(f"{relative}:{number}: {line.strip()}")
        for match in PARENT_CHAIN.finditer(line):
            if (
                match.group(1).count(".parent") > depth + 1
            ):  # the first .parent is the file's folder
                found.append(f"{relative}:{number}: {line.strip()}")
        for match in DOTDOT_RUN.finditer(line):
            anchored = line[: match.start()].endswith(")/")
            if match.group(0).count("..") > (depth if anchored else 0):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


@pytest.mark.parametrize(
    "relative, line",
    [
        (
            "tests/helpers.py",
            'KEYS = Path(__file__).resolve().parents[2] / "outside" / "keys.json"',
        ),
        ("tests/helpers.py", "ROOT = Path(__file__).resolve().parent.parent.parent"),
        ("scripts/test.sh", 'cp "$(dirname "$0")/../../outside/keys.json" tests/'),
        ("tests/helpers.py", 'open("../outside/official_keys.json")'),
        ("a.py", 'open("../outside/official_keys.json")'),
    ],
)
def test_the_checker_finds_paths_above_the_root(relative, line):
    assert escapes(Path(relative), line) == [f"{relative}:1: {line}"]


@pytest.mark.parametrize(
    "relative, line",
    [
        ("tests/helpers.py", 'KEYS = Path(__file__).resolve().parents[1] / "tests" / "data"'),
        ("benchmarks/common.py", "REPO_ROOT = Path(__file__).resolve().parent.parent"),
        ("scripts/test.sh", 'cd "$(dirname "$0")/.."'),
        ("svd_core/loading/diffusers_layout.py", "path.parent.parent"),
    ],
)
def test_the_checker_lets_paths_inside_the_root_pass(relative, line):
    assert escapes(Path(relative), line) == []


def test_no_tracked_file_reads_a_path_above_the_repository():
    files = tracked_code_files()
    assert any(p.name == "helpers.py" for p in files), "the file list is empty or wrong"
    this_file = Path(__file__).resolve()  # its examples of bad lines are data, not paths it reads
    found = [
        place
        for path in files
        if path.resolve() != this_file
        for place in escapes(path.relative_to(ROOT), path.read_text(errors="replace"))
    ]
    assert not found, "these lines read outside the repository:\n" + "\n".join(found)


def test_the_official_key_list_is_inside_the_repository():
    from helpers import OFFICIAL_KEYS

    assert OFFICIAL_KEYS.is_file()
    assert ROOT in OFFICIAL_KEYS.resolve().parents
