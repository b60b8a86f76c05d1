"""Durable, atomic file replacement: write a temporary file, fsync it, rename it, fsync the folder."""

from __future__ import annotations

import os
from pathlib import Path

from revsearch.crashpoints import write_point


def fsync_dir(path: Path) -> None:
    """fsync a file, or a folder (making renames and new entries in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file in ``directory`` (not recursive), then the folder itself."""
    for entry in directory.iterdir():
        if entry.is_file():
            fsync_dir(entry)
    fsync_dir(directory)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers and crashes see the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    write_point(f"{path.name} written to a temporary file")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    write_point(f"{path.name} replaced")
