#!/usr/bin/env bash
# Lint, format check and type check, with the settings in pyproject.toml; needs scripts/test.sh's
# environment (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check vgg_flax tests experiments benchmarks
.venv/bin/ruff format --check vgg_flax tests experiments benchmarks
.venv/bin/mypy
