#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs lint and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check ugpnet pipelines tests bench
# --durations: the slowest tests are listed at the end, so a run that grows towards CI's 90 minutes shows why.
exec .venv/bin/python -m pytest -q -ra --durations=25 "$@"
