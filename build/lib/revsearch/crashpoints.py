"""Fault injection for crash tests: ``REVSEARCH_CRASH_AT=n`` kills the process at its n-th write point.

Every place that changes an index on disk or in Milvus calls :func:`write_point` right after the
change. With ``REVSEARCH_CRASH_AT=n`` the n-th call sends SIGKILL to the process (nothing is flushed,
no handler runs: like ``kill -9`` or a power cut at that moment). With ``REVSEARCH_CRASH_LOG=file``
each call appends its label to ``file``, so a test can count the write points of an operation and
then kill it at each one in turn. ``REVSEARCH_CRASH_SIGNAL=INT`` sends SIGINT instead (a Ctrl-C at
that exact point). Without these variables a write point costs one dict lookup.
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
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get(CRASH_SIGNAL_ENV, "KILL")))
