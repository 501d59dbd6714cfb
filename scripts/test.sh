#!/usr/bin/env bash
# Installs the pinned CPU environment and the package into .venv, then runs the test suite.
#   bash scripts/test.sh [pytest arguments]
# It runs on two workers (pytest-xdist), so that one test's start-up, compiling and waiting overlap
# another's steps; `-n 0` runs it in one process, `-n N` on N workers.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-cpu.txt
.venv/bin/python -m pip install -q --no-deps -e .
exec .venv/bin/python -m pytest -n 2 --dist worksteal "$@"
