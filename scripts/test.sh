#!/usr/bin/env bash
# Set up, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ -z "${TORCH_HOME:-}" ] && [ -d ../shared/models/torch ]; then export TORCH_HOME="$(cd ../shared/models/torch && pwd)"; fi
[ ! -x .ci/plugin_setup.sh ] || .ci/plugin_setup.sh
.venv/bin/python -m pytest -q --durations=25 "$@"
