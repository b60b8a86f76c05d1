"""A Milvus Lite file is handed over between real processes when asked, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from revsearch.fiftyone.index_handle import IndexHandle
from revsearch.index.lite_lock import HANDS_OVER, lock_path

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
