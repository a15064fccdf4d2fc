#!/usr/bin/env bash
# The test suite: set up (host packages, venv, Docker engine), lint, then every test (opt-in ones skip unless asked).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
.venv/bin/ruff check hurdxen tests dodo.py bench
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
