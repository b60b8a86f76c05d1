"""One writer per index directory: an exclusive lock on ``<index>/.lock`` (``filelock``) while updating it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from revsearch.errors import IndexBusyError, RevsearchError

LOCK_FILE = ".lock"

_locks: dict[str, FileLock] = {}
_locks_mutex = threading.Lock()


def process_lock(path: Path, holder: Callable[[], str] = lambda: f"process {os.getpid()}") -> FileLock:
    """This process's one re-entrant, non-blocking ``flock`` on ``path`` (a second descriptor would
    conflict); ``holder()`` is written into the file on each acquisition, for others' errors. The
    kernel drops it when the process dies; the file is never deleted."""

    def write_holder(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder().encode(), 0)

    with _locks_mutex:
        key = os.path.abspath(path)
        if key not in _locks:
            Path(key).parent.mkdir(parents=True, exist_ok=True)
            _locks[key] = FileLock(
                key, timeout=0, thread_local=False, preserve_lock_file=True, on_acquired=write_holder
            )
        return _locks[key]


def read_holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its holder wrote it."""
    try:
        return Path(path).read_text().strip() or "another process"
    except OSError:
        return "another process"


class IndexLock:
    """Held while a build / sync / remove / move changes an index; re-entrant within one process,
    never left behind by a crash; a second live writer is refused with a clear error."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE

    def __enter__(self) -> IndexLock:
        try:
            self._lock = process_lock(self.path)
            self._lock.acquire()
        except Timeout:
            raise IndexBusyError(
                f"the index in {self.path.parent} is being updated by {read_holder(self.path)}; "
                "wait for it to finish, or use another --index-dir"
            ) from None
        except OSError as exc:
            raise RevsearchError(
                f"cannot update the index in {self.path.parent}: {exc.strerror or exc} (choose a writable --index-dir)"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
