#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): conformance on CUDA in fp32 with TF32 off (within 1e-3), a bf16
# and fp16 run, model-only vs pipeline images/s at 512² batch 8, fused vs split. Under 8 minutes on a
# GPU machine; without CUDA (or with --dry) the same code at tiny sizes on CPU, under a minute.
#   bench/gpu_check.sh [--dry] [--images N]        exit 0: every check passed
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
# 8 minutes on a GPU; the dry path is held to well under that by its own sizes.
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" "$python" bench/gpu_check.py "$@"
