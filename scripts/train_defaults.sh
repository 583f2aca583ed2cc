#!/usr/bin/env bash
# Trains the shipped default models with the project's own pipeline (Ray Train + MLflow) and copies each
# final bundle into ugpnet/defaults/<task>/. Usage: bash scripts/train_defaults.sh [denoise deblur sr]
# Work files (photos, checkpoints, MLflow sqlite database) go to $UGPNET_DEFAULTS_WORK (default
# ./.defaults-work); re-running resumes unfinished stages of the same run names.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${UGPNET_DEFAULTS_WORK:-$PWD/.defaults-work}"
TASKS=("${@:-denoise deblur sr}")
[ -x .venv/bin/ugpnet ] || bash scripts/setup.sh
export RAY_DATA_DISABLE_PROGRESS_BARS=1
mkdir -p "$WORK"
[ -f "$WORK/photos/manifest.json" ] || \
  .venv/bin/ugpnet data prepare --dest "$WORK/photos" --sources installed,kodak,mate --cache "$WORK/cache"
for task in ${TASKS[*]}; do
  start=$(date +%s)
  .venv/bin/ugpnet train --config "infra/configs/defaults/$task.yaml" --data "$WORK/photos/train" \
    --storage "$WORK/runs" --tracking-uri "sqlite:///$WORK/mlflow.db" 2>&1 | tee "$WORK/train-$task.log" \
    | grep --line-buffered "^ugpnet train"
  echo "train_defaults: $task took $(( $(date +%s) - start )) s"
  rm -rf "ugpnet/defaults/$task"
  mkdir -p "ugpnet/defaults/$task"
  cp "$WORK/runs/default-$task/bundles/fusion/"{model.safetensors,ugpnet.json} "ugpnet/defaults/$task/"
done
