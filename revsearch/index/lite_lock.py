"""One process at a time on a Milvus Lite file, handed over when another process asks for it.

The lock is ``<file>.revsearch.lock`` (an ``flock``; milvus-lite's own lock is deleted by a second
process that fails to open the file). A long-lived holder (the App, a notebook) registers a release
callback with :func:`hand_over_on_request`; another process that wants the file writes
``<file>.revsearch.request`` and the holder's watcher releases it, else the asker gets a busy error.
Commands that wait for the file (:meth:`LiteFileLock.acquire_in_turn`) take it first come, first served.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import Timeout

from revsearch.errors import LiteFileBusyError
from revsearch.locks import process_lock, read_holder

#: Written into the lock file by a holder that releases the file when asked.
HANDS_OVER = "releases it on request"
#: How long a process waits for a holder that hands over (it may be finishing an operation).
HANDOVER_WAIT_S = float(os.environ.get("REVSEARCH_LITE_HANDOVER_S", "30"))
#: How often the holder checks for requests, and the requester for the released file.
POLL_S = 0.1

logger = logging.getLogger(__name__)

_handlers: dict[str, list[weakref.WeakMethod]] = {}
_acquired_ns: dict[str, int] = {}
_mutex = threading.Lock()
_watcher: threading.Thread | None = None


def lock_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.revsearch.lock")


def request_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.revsearch.request")


def waiting_path(db_path: str | os.PathLike) -> Path:
    """The folder of waiters' tickets (see :meth:`LiteFileLock.acquire_in_turn`)."""
    return Path(f"{db_path}.revsearch.waiting")


def hand_over_on_request(db_path: str | os.PathLike, release: Callable[[], None]) -> None:
    """Call ``release`` (a bound method, held weakly) when another process asks for the Lite file
    ``db_path`` while this process holds it; ``release`` must close what holds the file."""
    global _watcher
    with _mutex:
        alive = [ref for ref in _handlers.get(str(db_path), []) if ref() is not None]
        _handlers[str(db_path)] = alive + [weakref.WeakMethod(release)]
        if _watcher is None:
            _watcher = threading.Thread(target=_watch, name="revsearch-lite-handover", daemon=True)
            _watcher.start()


def _hands_over(db_path: str) -> bool:
    with _mutex:
        return any(ref() is not None for ref in _handlers.get(db_path, []))


def _watch() -> None:
    """Release each held file whose request file was written after we took the file."""
    while True:
        time.sleep(POLL_S)
        with _mutex:
            watched = {path: [ref() for ref in refs] for path, refs in _handlers.items()}
        for db_path, releases in watched.items():
            if db_path not in _acquired_ns:
                continue
            try:
                requested = request_path(db_path).stat().st_mtime_ns
            except OSError:
                continue
            if requested > _acquired_ns.get(db_path, requested):
                for release in releases:
                    try:
                        if release is not None:
                            release()
                    except Exception:  # the watcher must outlive one failed release
                        logger.exception("could not release Milvus Lite file %s on request", db_path)


class LiteFileLock:
    """An exclusive, process-wide lock on an open Milvus Lite file, shared (reference count) by the
    process's indexes on it; the Lite server is stopped when the last of them closes."""

    def __init__(self, db_path: Path):
        self.db_path = str(db_path)
        self.path = lock_path(db_path)

    def _holder(self) -> str:
        """What the lock file tells another process about the holder."""
        return f"process {os.getpid()}" + (f" ({HANDS_OVER})" if _hands_over(self.db_path) else "")

    def acquire(self) -> None:
        lock = process_lock(self.path, self._holder)
        deadline = None
        while True:
            try:
                lock.acquire()
                break
            except Timeout:
                holder = read_holder(self.path)
                if HANDS_OVER not in holder or (deadline is not None and time.monotonic() > deadline):
                    waited = f" (asked it to release the file; no answer in {HANDOVER_WAIT_S:g} s)" if deadline else ""
                    raise LiteFileBusyError(
                        f"Milvus Lite file {self.db_path} is open in {holder}{waited}; a Lite file serves one "
                        "process at a time (close it there, or use a Milvus server for shared access)"
                    ) from None
                deadline = deadline or time.monotonic() + HANDOVER_WAIT_S
                request_path(self.db_path).write_text(f"process {os.getpid()}")
                time.sleep(POLL_S)
        if lock.lock_counter == 1:
            _acquired_ns[self.db_path] = time.time_ns()

    def acquire_in_turn(self, wait_s: float) -> None:
        """:meth:`acquire`, waiting up to ``wait_s`` while other processes hold or wait for the file, first
        come, first served: a waiter holds a ticket (a file it locks, named by its arrival time, in
        :func:`waiting_path`) and tries for the file only once no older ticket is locked; a dead waiter's
        ticket is unlocked, and deleted by the next waiter that finds it. A process that holds the file
        already takes another reference at once (it would otherwise wait behind a waiter waiting for it)."""
        if process_lock(self.path, self._holder).is_locked:
            try:
                return self.acquire()
            except LiteFileBusyError:
                pass  # released by another thread meanwhile: wait like any other process
        deadline = time.monotonic() + wait_s
        with _ticket(waiting_path(self.db_path)) as ticket:
            while True:
                ahead = [t for t in sorted(ticket.parent.iterdir()) if t.name < ticket.name and _waits(t)]
                if not ahead:
                    try:
                        return self.acquire()
                    except LiteFileBusyError as exc:
                        if time.monotonic() > deadline:
                            raise LiteFileBusyError(f"{exc}; waited {wait_s:g} s for it") from None
                elif time.monotonic() > deadline:
                    raise LiteFileBusyError(
                        f"Milvus Lite file {self.db_path} is busy: {len(ahead)} other command(s) that came first "
                        f"still wait for it after {wait_s:g} s"
                    )
                time.sleep(POLL_S)

    def release(self) -> None:
        """Drop one reference; the last one stops this process's Lite server and unlocks the file."""
        lock = process_lock(self.path, self._holder)
        if not lock.is_locked:
            return
        if lock.lock_counter == 1:
            _acquired_ns.pop(self.db_path, None)
            stop_lite_server(self.db_path)
        lock.release()


@contextmanager
def _ticket(folder: Path) -> Iterator[Path]:
    """This thread's place in the line of waiters: a file in ``folder`` locked for the block, then deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}"
    temp, ticket = folder / f".{name}", folder / name  # locked before it is in line under its name
    fd = os.open(temp, os.O_RDONLY | os.O_CREAT | os.O_EXCL)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temp, ticket)
        yield ticket
    finally:
        ticket.unlink(missing_ok=True)
        temp.unlink(missing_ok=True)
        os.close(fd)


def _waits(ticket: Path) -> bool:
    """Whether the waiter of ``ticket`` still waits (holds its lock); a dead waiter's ticket is deleted."""
    if ticket.name.startswith("."):
        return False  # not yet in line
    try:
        fd = os.open(ticket, os.O_RDONLY)
    except FileNotFoundError:
        return False  # its waiter got the file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        ticket.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)


def stop_lite_server(db_path: str | os.PathLike) -> None:
    """Stop this process's Milvus Lite server for ``db_path``, if it runs (pymilvus never stops it)."""
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:  # not imported: no Lite server was started in this process
        manager.server_manager_instance.release_server(str(db_path))
