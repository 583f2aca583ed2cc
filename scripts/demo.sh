#!/usr/bin/env bash
# The main job on a fresh machine: set up, then restore the sample photos with the shipped default
# model through the Ray Data pipeline (local Ray, local folders). Writes demo_output/index.html.
# Extra arguments go to `ugpnet demo` (e.g. --task sr).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # a private local cluster: no token needed
exec .venv/bin/ugpnet demo --out demo_output "$@"
