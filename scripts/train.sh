#!/usr/bin/env bash
# Installs the pinned environment (with CUDA wheels when an NVIDIA GPU is present) and the package
# into .venv, then trains and evaluates: the lesson's recipe into runs/d2l on a GPU machine,
# experiments/quick.py into runs/quick on a CPU; running it again resumes.
#   bash scripts/train.sh [--config=experiments/X.py] [--workdir=DIR] [--config.FIELD=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ensure_venv requirements.txt
  config=--config=experiments/d2l_vgg11.py
  workdir=--workdir=runs/d2l
else
  ensure_venv requirements-cpu.txt
  config=--config=experiments/quick.py
  workdir=--workdir=runs/quick
fi
# Those defaults unless the arguments name a config or a workdir of their own.
for arg in "$@"; do
  case $arg in
    --config | --config=*) config= ;;
    --workdir | --workdir=*) workdir= ;;
  esac
done
if [ "$config" = --config=experiments/quick.py ]; then
  echo "No GPU here: training experiments/quick.py (VGG-11 at 32 px, minutes on a CPU)." \
    "The lesson's 224 px recipe, hours on a CPU: bash scripts/train.sh --config=experiments/d2l_vgg11.py" >&2
fi
exec .venv/bin/python -m vgg_flax.main ${config:+"$config"} ${workdir:+"$workdir"} "$@"
