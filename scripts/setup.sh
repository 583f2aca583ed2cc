#!/usr/bin/env bash
# Creates .venv and installs the project with its development extras. Idempotent.
# The CPU build of torch is installed first, pinned, so that resolving the project never pulls a
# CUDA build (several GB) on a machine without a GPU. On a GPU machine set UGPNET_TORCH to the
# torch requirement you want (e.g. "torch==2.14.1").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_REQUIREMENT=${UGPNET_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.ugpnet-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/constraints.txt ]; then
    exit 0
fi
# pip's "WARNING: Location ..." lines are noise here and are filtered out, but pip's own exit status
# is kept (grep finding nothing to print is not a failure): a failed install stops the script before
# the stamp below is written, so the next run tries again.
pip_install() {
    local status=0
    .venv/bin/python -m pip install --quiet "$@" 2>&1 | { grep -v '^WARNING: Location' || true; } || status=$?
    if [ "$status" -ne 0 ]; then
        echo "setup.sh: pip install $* failed with status $status" >&2
        exit "$status"
    fi
}
pip_install --upgrade pip
pip_install "$TORCH_REQUIREMENT"
pip_install -c scripts/constraints.txt -e ".[dev]" "$TORCH_REQUIREMENT"
.venv/bin/python -c "import torch, ray, mlflow, ugpnet, pipelines" # fail loudly if anything is missing
touch "$stamp"
