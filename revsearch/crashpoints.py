"""Fault injection for crash tests: ``REVSEARCH_CRASH_AT=n`` kills the process at its n-th write point.

Every change to an index on disk or in Milvus is followed by :func:`write_point`. The n-th call
sends SIGKILL (like ``kill -9`` or a power cut there; ``REVSEARCH_CRASH_SIGNAL=INT``: a Ctrl-C);
``REVSEARCH_CRASH_LOG=file`` appends each call's label to ``file``, so a test can count the write
points of an operation and kill it at each in turn. Unset, a write point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_AT_ENV, CRASH_LOG_ENV, CRASH_SIGNAL_ENV = "REVSEARCH_CRASH_AT", "REVSEARCH_CRASH_LOG", "REVSEARCH_CRASH_SIGNAL"
_count = 0


def write_point(label: str) -> None:
    """Mark that a write has just reached the disk or the vector store (see module doc)."""
    global _count
    crash_at, log = os.environ.get(CRASH_AT_ENV), os.environ.get(CRASH_LOG_ENV)
    if crash_at is None and log is None:
        return
    _count += 1
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{_count} {label}\n")
    if crash_at is not None and _count == int(crash_at):
        # raise_signal, not kill(getpid()): the signal reaches this thread at once (a Ctrl-C raises
        # KeyboardInterrupt right here in the main thread), never after more work has run
        signal.raise_signal(getattr(signal, "SIG" + os.environ.get(CRASH_SIGNAL_ENV, "KILL")))
