#!/usr/bin/env bash
# Set up, then index real photos in Milvus Lite and query them with edited copies.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Offline here: seed torchvision's cache from the team share when it exists (users download as usual).
if [ -z "${TORCH_HOME:-}" ] && [ -d ../shared/models/torch ]; then export TORCH_HOME="$(cd ../shared/models/torch && pwd)"; fi
.venv/bin/python examples/demo.py "$@"
