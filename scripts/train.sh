#!/usr/bin/env bash
# Installs the pinned environment (with CUDA wheels when an NVIDIA GPU is present) and the package
# into .venv, then trains and evaluates the lesson's recipe, resuming runs/d2l if it exists.
#   bash scripts/train.sh [--config=experiments/X.py] [--workdir=DIR] [--config.FIELD=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements-cpu.txt
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  requirements=requirements.txt
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "$requirements"
.venv/bin/python -m pip install -q --no-deps -e .
# The recipe and runs/d2l unless the arguments name a config or a workdir of their own.
config=--config=experiments/d2l_vgg11.py
workdir=--workdir=runs/d2l
for arg in "$@"; do
  case $arg in
    --config | --config=*) config= ;;
    --workdir | --workdir=*) workdir= ;;
  esac
done
exec .venv/bin/python -m vgg_flax.main ${config:+"$config"} ${workdir:+"$workdir"} "$@"
