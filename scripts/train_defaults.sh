#!/usr/bin/env bash
# Trains the shipped default models with the project's own pipeline (Ray Train + MLflow), copies each
# final bundle into ugpnet/defaults/<task>/, evaluates it on the fixed test split (`ugpnet evaluate`) and
# writes its MODEL_CARD.md. Usage: bash scripts/train_defaults.sh [TASK ...]
# Work files (photos, checkpoints, MLflow sqlite database, reports) go to $UGPNET_DEFAULTS_WORK (default
# ./.defaults-work); re-running resumes unfinished stages of the same run names.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${UGPNET_DEFAULTS_WORK:-$PWD/.defaults-work}"
[ -x .venv/bin/ugpnet ] || bash scripts/setup.sh
TASKS=("$@")  # default: every task of ugpnet/tasks.py
[ ${#TASKS[@]} -gt 0 ] || read -ra TASKS <<< "$(.venv/bin/python -c 'from ugpnet.tasks import TASKS; print(*TASKS)')"
export RAY_DATA_DISABLE_PROGRESS_BARS=1
mkdir -p "$WORK"
[ -f "$WORK/photos/manifest.json" ] || \
  .venv/bin/ugpnet data prepare --dest "$WORK/photos" --sources installed,kodak,mate --cache "$WORK/cache"
for task in ${TASKS[*]}; do
  start=$(date +%s)
  .venv/bin/ugpnet train --config "infra/configs/defaults/$task.yaml" --data "$WORK/photos/train" \
    --storage "$WORK/runs" --tracking-uri "sqlite:///$WORK/mlflow.db" 2>&1 | tee "$WORK/train-$task.log" \
    | grep --line-buffered "^ugpnet train"
  seconds=$(( $(date +%s) - start ))
  echo "train_defaults: $task trained in $seconds s"
  rm -rf "ugpnet/defaults/$task"
  mkdir -p "ugpnet/defaults/$task"
  cp "$WORK/runs/default-$task/bundles/fusion/"{model.safetensors,ugpnet.json} "ugpnet/defaults/$task/"
  # 256 px centre crops keep the CPU evaluation to minutes; the strengths are the task's defaults.
  .venv/bin/ugpnet evaluate --model "ugpnet/defaults/$task" --data "$WORK/photos/test" --task "$task" \
    --crop 256 --report "$WORK/eval/$task" 2>&1 | tee "$WORK/eval-$task.log" | grep -v "INFO\|WARN\|DEBUG" | tail -20
  .venv/bin/python -m pipelines.registry.model_card --bundle "ugpnet/defaults/$task" \
    --config "infra/configs/defaults/$task.yaml" --data-manifest "$WORK/photos/manifest.json" \
    --tracking-uri "sqlite:///$WORK/mlflow.db" --evaluation "$WORK/eval/$task/summary.json"
done
