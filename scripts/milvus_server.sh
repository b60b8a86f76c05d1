#!/usr/bin/env bash
# Run a real Milvus server without Docker: the embedded Milvus 2.3.5 standalone from PyPI
# (etcd and local storage built in), in the foreground, until Ctrl+C. If PORT is taken, the
# server silently moves to the next free port: check that nothing else listens on it first.
#
#   scripts/milvus_server.sh                  # serves http://localhost:19530
#   MILVUS_PORT=19540 MILVUS_DATA=/tmp/m scripts/milvus_server.sh
#
# Then: REVSEARCH_MILVUS_URI=http://localhost:19530 .venv/bin/python -m pytest -m server tests/test_server.py
# For production use docker-compose.yml (Milvus 2.6) or Kubernetes; see docs/scale-out.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${MILVUS_PORT:-19530}"
DATA="${MILVUS_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/revsearch/milvus-server}"
[ -x .venv/bin/milvus-server ] || .venv/bin/pip install --no-deps milvus==2.3.5
echo "Milvus standalone 2.3.5 on http://localhost:${PORT} (data: ${DATA}); Ctrl+C stops it"
exec .venv/bin/milvus-server --data "$DATA" --proxy-port "$PORT"
