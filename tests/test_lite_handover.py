"""A Milvus Lite file is handed over between real processes when asked, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from revsearch.fiftyone.index_handle import IndexHandle
from revsearch.index.lite_lock import HANDS_OVER, LiteFileLock, lock_path, waiting_path

_CHILD = """
import sys
import numpy as np
from revsearch import MilvusIndex
from revsearch.errors import LiteFileBusyError
try:
    index = MilvusIndex(8, collection="t", uri=sys.argv[1], create=False)
except LiteFileBusyError as exc:
    print("BUSY", exc)
else:
    index.add([f"child{i}" for i in range(50)], np.random.default_rng(1).random((50, 8), dtype=np.float32))
    print("ADDED", len(index))
    index.close()
"""

_WAITER = (
    "import sys; from revsearch.index.lite_lock import LiteFileLock; LiteFileLock(sys.argv[1]).acquire_in_turn(600)"
)


def _child(uri: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, uri],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def store(tmp_path):
    store = IndexHandle({"kind": "milvus", "dim": 8}, {"collection": "t", "uri": str(tmp_path / "shared.db")})
    store.add([f"parent{i}" for i in range(100)], np.random.default_rng(0).random((100, 8), dtype=np.float32))
    yield store
    store.release()


def test_the_holder_keeps_the_file_open_between_operations_and_says_it_hands_over(store):
    first = store._index
    assert len(store) == 100 and store._index is first  # no restart between operations
    assert HANDS_OVER in lock_path(Path(store.options["uri"]).resolve()).read_text()


def test_the_holder_releases_when_another_process_asks_and_no_data_is_lost(store):
    assert _child(store.options["uri"]) == "ADDED 150"  # the child got the file from the running holder
    assert store._index is None  # released on request
    assert len(store) == 150  # re-opened here, with the child's vectors
    assert {k for k in store.keys() if k.startswith("child")} == {f"child{i}" for i in range(50)}
    hits = store.search(np.random.default_rng(0).random((1, 8), dtype=np.float32), 1)
    assert hits[0][0].key == "parent0"


def test_a_holder_that_does_not_answer_gives_a_clear_busy_error(store):
    lock = lock_path(Path(store.options["uri"]).resolve())
    with store.hold():  # an operation in progress: the hand-over waits for it
        out = _child(store.options["uri"], REVSEARCH_LITE_HANDOVER_S="1")
        assert out.startswith("BUSY") and "no answer in 1 s" in out and "one process at a time" in out
        assert lock.exists() and len(store._index) == 100  # the holder is unaffected
    assert _child(store.options["uri"]) == "ADDED 150"  # once the operation ends, it is handed over


def test_a_waiter_killed_in_line_does_not_hold_up_the_next(tmp_path):
    """Waiters for a Lite file go first come, first served; one killed while it waits leaves a ticket that
    nobody holds, which the next waiter deletes instead of waiting behind it."""
    db = tmp_path / "shared.db"
    held = LiteFileLock(db)
    held.acquire()
    waiter = subprocess.Popen(
        [sys.executable, "-c", _WAITER, str(db)], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    )
    while not list(waiting_path(db).glob("[0-9]*")):  # its ticket is in line
        assert waiter.poll() is None
        time.sleep(0.05)
    waiter.kill()
    waiter.wait()
    held.release()
    lock = LiteFileLock(db)
    lock.acquire_in_turn(10)  # the dead waiter's ticket came first
    lock.release()
    assert list(waiting_path(db).iterdir()) == []
