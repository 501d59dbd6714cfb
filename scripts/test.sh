#!/usr/bin/env bash
# Installs the pinned CPU environment and the package into .venv, then runs the test suite.
#   bash scripts/test.sh [--fast] [pytest arguments]
# --fast runs the everyday tier: every test not marked `slow` (unit and shape tests and one short
# training run). It runs on two workers (pytest-xdist), so that one test's start-up, compiling and
# waiting overlap another's steps; `-n 0` runs it in one process, `-n N` on N workers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv requirements-cpu.txt
if [ "${1:-}" = --fast ]; then
  shift
  set -- -m 'not slow' "$@"
fi
exec .venv/bin/python -m pytest -n 2 --dist worksteal "$@"
