#!/usr/bin/env bash
# The README's test command: make the test environment, install svd_core with its test-only
# references, check style, and run the whole suite. Safe to run again: an existing environment is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SVD_CORE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    python3 -m venv "$venv"
fi
py="$venv/bin/python"

# open-clip-torch (a test-only reference) needs torchvision, and torchvision imports only beside the
# torch it was built for. torch 2.14.1 + torchvision 0.29.1 is the pair this machine keeps on local
# disk, so pip installs it without downloading; where some torch is already present we keep it.
if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "==> installing torch 2.14.1 + torchvision 0.29.1"
    "$py" -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    "$py" -c "import torch, torchvision" || { echo "torch/torchvision did not install" >&2; exit 1; }
fi

echo "==> installing svd_core[dev]"
"$py" -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
"$py" -c "import svd_core, diffusers, transformers, open_clip" \
    || { echo "svd_core or a test reference did not install" >&2; exit 1; }

echo "==> ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

# The suite writes up to about 3 GB of temporary checkpoints; on a nearly full disk tests would fail
# with "No space left on device" deep inside torch.save, so say so up front.
tmp="${TMPDIR:-/tmp}"
free_kb=$(df -Pk "$tmp" | awk 'NR==2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt 4000000 ]; then
    echo "warning: only $((free_kb / 1024)) MiB free in $tmp; the test suite needs about 3 GB there" >&2
fi

echo "==> pytest"
"$py" -m pytest "$@"
