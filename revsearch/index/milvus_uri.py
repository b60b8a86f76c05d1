"""Milvus URIs: a Lite file path or a server address (no pymilvus import, so the plugin loads fast)."""

from __future__ import annotations

import re

from revsearch.errors import RevsearchError

#: Lite file of a folder index when no URI is given (inside the index folder).
DEFAULT_URI = "revsearch.db"


def is_lite_uri(uri: str) -> bool:
    """True for a Milvus Lite file path, False for a server URI."""
    return not uri.startswith(("http://", "https://", "tcp://", "unix:", "grpc://"))


def check_lite_file_name(name: str) -> None:
    """milvus-lite 2.5 accepts file names of at most 36 characters from [A-Za-z0-9._-]."""
    if len(name) > 36 or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise RevsearchError(
            f"Milvus Lite file name {name!r} is not accepted by milvus-lite: use at most 36 "
            "characters from letters, digits, '.', '_' and '-' (the folder may be anything)"
        )
