"""One writer per index directory: an exclusive ``flock`` on ``<index>/.lock`` while updating it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import IndexBusyError, RevsearchError

LOCK_FILE = ".lock"


class IndexLock:
    """Held while a build / sync / remove / move changes an index; re-entrant within one process.

    The kernel drops the lock when the process dies (even by SIGKILL), so a crashed run never
    leaves the index locked; a second live writer is refused with a clear error instead of mixing
    its checkpoint and vectors with the first one's.
    """

    _held: dict[str, tuple[object, int]] = {}

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE

    def __enter__(self) -> IndexLock:
        key = str(self.path)
        if key in self._held:
            handle, count = self._held[key]
            self._held[key] = (handle, count + 1)
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as exc:
            raise RevsearchError(f"cannot update the index in {self.path.parent}: {exc.strerror or exc} "
                                 "(choose a writable --index-dir)") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise IndexBusyError(f"the index in {self.path.parent} is being updated by {holder}; wait for it "
                                 "to finish, or use another --index-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self._held[key] = (handle, 1)
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path)
        handle, count = self._held.pop(key)
        if count > 1:
            self._held[key] = (handle, count - 1)
        else:
            handle.close()

