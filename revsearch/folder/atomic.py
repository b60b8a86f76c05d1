"""Durable, atomic file replacement (write a temporary file, fsync it, rename it, fsync the folder), file
checksums, and disk-full errors that name the place and leave the committed index as it was."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from revsearch.crashpoints import write_point
from revsearch.errors import DiskFullError


def fsync_dir(path: Path) -> None:
    """fsync a file, or a folder (making renames and new entries in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checksum(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def seal_tree(directory: Path) -> dict[str, str]:
    """fsync every file below ``directory`` and the folders; returns each file's checksum by relative path."""
    sums: dict[str, str] = {}
    for entry in sorted(directory.rglob("*")):
        fsync_dir(entry)
        if entry.is_file():
            sums[entry.relative_to(directory).as_posix()] = checksum(entry)
    fsync_dir(directory)
    return sums


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers and crashes see the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave no partial file taking space
        raise
    write_point(f"{path.name} written to a temporary file")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    write_point(f"{path.name} replaced")


def is_disk_full(exc: OSError) -> bool:
    """ENOSPC / EDQUOT, or numpy's short write ("N requested and M written", which carries no errno)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and "requested and" in str(exc))


def disk_full(path: Path, detail: str = "") -> DiskFullError:
    """The error for a write that found the disk of ``path`` full."""
    return DiskFullError(
        f"no space left on the disk of {path}{detail}: free some space and run again "
        "(the committed index is unchanged and still answers queries)"
    )


@contextmanager
def disk_full_as_error(path: Path) -> Iterator[None]:
    """Turn a disk-full ``OSError`` raised inside the block into one :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise


def check_space(path: Path, nbytes: int) -> None:
    """Refuse, before writing, a write of about ``nbytes`` under ``path`` that its disk cannot take."""
    free = shutil.disk_usage(path).free
    if nbytes > free:
        raise disk_full(path, f" (about {nbytes / 2**20:.1f} MiB to write, {free / 2**20:.1f} MiB free)")
