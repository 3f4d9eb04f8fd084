#!/usr/bin/env bash
# The README's demo command: make the environment (the small CPU torch is enough to run svd_core),
# install svd_core, and animate the shipped example image with the shipped tiny model.
# Safe to run again: an existing environment is reused. Extra arguments go to `svd-core generate`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SVD_CORE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
quiet_pip() {
    "$py" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
}

# Any torch works at run time; where none is installed take the small CPU build from local disk
# rather than a multi-GB CUDA build from PyPI.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "==> installing torch 2.13.0 (CPU)"
    quiet_pip "torch==2.13.0"
fi
if ! "$py" -c "import svd_core, imageio_ffmpeg" >/dev/null 2>&1; then
    echo "==> installing svd_core"
    quiet_pip -e .
fi
"$py" -c "import svd_core" || { echo "svd_core did not install" >&2; exit 1; }

mkdir -p outputs
echo "==> generating"
"$venv/bin/svd-core" generate weights/example.png -o outputs/demo.mp4 --seed 0 "$@"
