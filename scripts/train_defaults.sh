#!/usr/bin/env bash
# Trains the shipped default models with the project's own pipeline (Ray Train + MLflow), copies each
# final bundle into ugpnet/defaults/<task>/, evaluates it on the fixed test split (`ugpnet evaluate`) and
# writes its MODEL_CARD.md. Usage: bash scripts/train_defaults.sh [TASK ...]
# Work files (photos, checkpoints, MLflow sqlite database, reports) go to $UGPNET_DEFAULTS_WORK (default
# ./.defaults-work); re-running resumes unfinished stages of the same run names.
# A task with infra/configs/defaults/<task>-continue*.yaml gets further rounds: each config, started from
# the previous round's bundle (init_bundle); the last round's bundle is the one shipped. These rounds run on a local
# Ray head this script starts with one logical CPU more than the cores, so that a worker with two torch
# threads leaves a CPU to the data pipeline; the script stops that head (by its process group) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${UGPNET_DEFAULTS_WORK:-$PWD/.defaults-work}"
[ -x .venv/bin/ugpnet ] || bash scripts/setup.sh
TASKS=("$@")  # default: every task of ugpnet/tasks.py
[ ${#TASKS[@]} -gt 0 ] || read -ra TASKS <<< "$(.venv/bin/python -c 'from ugpnet.tasks import TASKS; print(*TASKS)')"
export RAY_DATA_DISABLE_PROGRESS_BARS=1
mkdir -p "$WORK"
[ -f "$WORK/photos/manifest.json" ] || \
  .venv/bin/ugpnet data prepare --dest "$WORK/photos" --sources installed,kodak,mate,plasma --cache "$WORK/cache"
train() {  # CONFIG LOG [ARGS...]: one `ugpnet train` round of a task
  local config=$1 log=$2; shift 2
  .venv/bin/ugpnet train --config "$config" --data "$WORK/photos/train" --storage "$WORK/runs" \
    --tracking-uri "sqlite:///$WORK/mlflow.db" "$@" 2>&1 | tee "$log" | grep --line-buffered "^ugpnet train"
}
run_name() {  # CONFIG: the run (and bundle folder) name a config trains under
  .venv/bin/python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["run_name"])' "$1"
}
stop_ray_head() {  # `ray start --block` may outlive a TERM of its group by many seconds: then KILL it
  kill -- -"$RAY_HEAD_PID" 2>/dev/null || return 0
  for _ in $(seq 30); do kill -0 "$RAY_HEAD_PID" 2>/dev/null || return 0; sleep 1; done
  kill -9 -- -"$RAY_HEAD_PID" 2>/dev/null || true
}
start_ray_head() {
  [ -z "${RAY_ADDRESS:-}" ] || return 0
  local port=6391 cpus=$(( $(nproc) + 1 ))
  RAY_AUTH_MODE=disabled setsid .venv/bin/ray start --head --block --num-cpus "$cpus" --port "$port" \
    --node-ip-address 127.0.0.1 --include-dashboard=false --disable-usage-stats --temp-dir "/tmp/ugpnet-defaults-ray-$$" \
    > "$WORK/ray-head.log" 2>&1 &
  RAY_HEAD_PID=$!
  trap stop_ray_head EXIT
  export RAY_ADDRESS="127.0.0.1:$port" RAY_AUTH_MODE=disabled
  until .venv/bin/ray status --address "$RAY_ADDRESS" > /dev/null 2>&1; do
    kill -0 "$RAY_HEAD_PID" 2>/dev/null || { cat "$WORK/ray-head.log"; exit 1; }
    sleep 1
  done
}
for task in ${TASKS[*]}; do
  start=$(date +%s)
  train "infra/configs/defaults/$task.yaml" "$WORK/train-$task.log"
  final="$WORK/runs/$(run_name "infra/configs/defaults/$task.yaml")/bundles/fusion"
  card_config="infra/configs/defaults/$task.yaml" history=""
  round=1
  # Further rounds, in file-name order (denoise-continue.yaml, denoise-continue2.yaml, ...), each from the
  # bundle of the round before.
  for continue_config in $(ls infra/configs/defaults/"$task"-continue*.yaml 2>/dev/null | LC_ALL=C sort || true); do
    start_ray_head
    round=$(( round + 1 ))
    name=$(basename "$continue_config" .yaml)
    train "$continue_config" "$WORK/train-$name.log" --set "init_bundle=$final"
    history="Round $round of $round: started from round $(( round - 1 ))'s bundle (\`$card_config\`)."
    final="$WORK/runs/$(run_name "$continue_config")/bundles/fusion" card_config="$continue_config"
  done
  seconds=$(( $(date +%s) - start ))
  echo "train_defaults: $task trained in $seconds s"
  rm -rf "ugpnet/defaults/$task"
  mkdir -p "ugpnet/defaults/$task"
  cp "$final/"{model.safetensors,ugpnet.json} "ugpnet/defaults/$task/"
  # 256 px centre crops keep the CPU evaluation to minutes; the strengths are the task's defaults.
  .venv/bin/ugpnet evaluate --model "ugpnet/defaults/$task" --data "$WORK/photos/test" --task "$task" \
    --crop 256 --report "$WORK/eval/$task" 2>&1 | tee "$WORK/eval-$task.log" | grep -v "INFO\|WARN\|DEBUG" | tail -20
  .venv/bin/python -m pipelines.registry.model_card --bundle "ugpnet/defaults/$task" \
    --config "$card_config" --history "$history" --data-manifest "$WORK/photos/manifest.json" \
    --tracking-uri "sqlite:///$WORK/mlflow.db" --evaluation "$WORK/eval/$task/summary.json"
done
