"""The ``revsearch`` command's entry point. For a query on a Milvus Lite index that no process
serves yet, the file's serving process (:mod:`revsearch.lite_server`) starts first, so that it
imports pymilvus and starts the Lite server while this process imports the command line and loads
the model, instead of after."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path


def serve_early(argv: list[str]) -> object | None:
    """For ``query ... [--index-dir DIR]`` on a Lite index: the started
    :class:`~revsearch.lite_server.LiteServerStart` (keep it until the command ends), else None.
    Anything unexpected (another command, no index, a server URI) is left to the command itself."""
    from .generations import DEFAULT_INDEX_DIR, MANIFEST, resolve_lite_uri
    from .lite_preload import Preload
    from .lite_server import LiteServerStart, default_to_shared, shared_mode

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("command", nargs="?")
    parser.add_argument("--index-dir", default=DEFAULT_INDEX_DIR)
    try:
        known, _ = parser.parse_known_args(argv)
    except SystemExit:  # bad arguments: the command line says so itself
        return None
    default_to_shared()
    if known.command != "query" or not shared_mode():
        return None
    directory = Path(known.index_dir).absolute()
    try:
        backend = json.loads((directory / MANIFEST).read_text())["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(backend, dict) or backend.get("kind") != "milvus":
        return None
    return LiteServerStart.for_uri(resolve_lite_uri(directory, backend)["uri"], Preload.of(backend))


def main() -> int:
    starting = serve_early(sys.argv[1:])
    from .cli import main as cli_main

    try:
        return cli_main()
    finally:
        if starting is not None:
            starting.release()
        # The interpreter's last garbage collection walks every object the imports made (0.05-0.1 s
        # of a 1.5 s query); at exit nothing needs it.
        gc.freeze()
