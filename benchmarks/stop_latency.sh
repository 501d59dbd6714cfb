#!/usr/bin/env bash
# How long a run takes to save and exit after a SIGTERM (a scheduler's pre-emption, which SLURM
# follows with SIGKILL 30 s later by default): the lesson's recipe at 224 px from the IDX files.
#   bash benchmarks/stop_latency.sh IDX_DIR [--config.FIELD=VALUE ...]
# Starts a run in a fresh workdir, lets it train for $TRAIN_SECONDS (default 40) after compiling,
# sends SIGTERM and prints the seconds until the process has exited, with the step it saved.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
idx_dir=${1:?usage: bash benchmarks/stop_latency.sh IDX_DIR [--config.FIELD=VALUE ...]}
shift
workdir=$(mktemp -d)/run
"$python" -m vgg_flax.main --config=experiments/d2l_vgg11.py --workdir="$workdir" \
    --config.data.source=idx --config.data.idx_dir="$idx_dir" \
    --config.data.max_train_examples=12800 --config.train.log_every_steps=1000 "$@" \
    >"$workdir.log" 2>&1 &
pid=$!
until [[ -f $workdir/config.json ]]; do  # Written once compiled, as training starts.
  kill -0 "$pid" 2>/dev/null || { cat "$workdir.log"; exit 1; }
  sleep 0.2
done
sleep "${TRAIN_SECONDS:-40}"
start=$(date +%s%N)
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
end=$(date +%s%N)
millis=$(( (end - start) / 1000000 ))
echo "SIGTERM to exit: $((millis / 1000)).$(printf %03d $((millis % 1000))) s (status $status): $(tail -1 "$workdir.log")"
rm -rf "$(dirname "$workdir")"
