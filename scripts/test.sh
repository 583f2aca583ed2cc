#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs lint and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check ugpnet pipelines tests bench
exec .venv/bin/python -m pytest -q -ra "$@"
