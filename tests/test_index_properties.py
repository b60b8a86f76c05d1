"""Random sequences of add / modify / corrupt / delete / index / kill against the index invariant.

A hypothesis state machine changes a small folder at random and indexes it, sometimes in a process
killed (SIGKILL) at a random write point. After every kill, opening the index shows the last
committed index or the new one, whole; after every completed index run, the index holds exactly
the good files of the folder, each once, with their current vectors, and nothing is left over.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crash_ops import OPERATIONS, counts, fresh, index_state, leftovers, run_op, same_state, write_image
from revsearch.errors import IndexMismatchError

NAMES = ("a.png", "b.png", "c.png", "d.png")
TALLY = {"sequences": 0, "steps": 0, "kills": 0, "index_runs": 0}


class IndexMachine(RuleBasedStateMachine):
    backend = "pixel"

    @initialize()
    def start(self):
        self.root = Path(tempfile.mkdtemp(prefix="revsearch-prop-"))
        self.folder, self.index_dir = self.root / "images", self.root / "idx"
        self.folder.mkdir()
        self.committed = None  # the last index known to be committed (key -> vector), None before any
        TALLY["sequences"] += 1

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _clear(self, name: str) -> Path:
        path = self.folder / name
        if path.is_dir():
            path.rmdir()
        return path

    @rule(name=st.sampled_from(NAMES), seed=st.integers(0, 10_000))
    def write(self, name, seed):  # add a file, or modify it
        write_image(self._clear(name), seed)

    @rule(name=st.sampled_from(NAMES))
    def corrupt(self, name):
        self._clear(name).write_bytes(b"\x89PNG\r\n\x1a\n corrupt")

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name):
        path = self._clear(name)
        path.unlink(missing_ok=True)

    @rule(name=st.sampled_from(NAMES))
    def make_directory(self, name):
        self._clear(name).unlink(missing_ok=True)
        (self.folder / name).mkdir()

    @rule()
    def index(self):
        TALLY["index_runs"] += 1
        expected = fresh(self.folder)
        try:
            OPERATIONS["index"](str(self.folder), str(self.index_dir), self.backend)
        except IndexMismatchError:  # a first build with no good file: nothing is committed
            assert not expected and self.committed is None
            return
        state = index_state(self.index_dir)
        assert counts(state, expected) == {"lost": 0, "stale": 0, "orphaned": 0}
        assert leftovers(self.index_dir) == []
        self.committed = state

    @rule(point=st.integers(1, 20))
    def killed_index(self, point):
        TALLY["kills"] += 1
        expected = fresh(self.folder)
        done = run_op("index", self.folder, self.index_dir, self.backend, REVSEARCH_CRASH_AT=str(point))
        assert done.returncode in (-signal.SIGKILL, 0, 1), done.stderr  # 1: a first build with no good file
        state = index_state(self.index_dir)  # recovers
        assert same_state(state, self.committed) or same_state(state, expected), counts(state, expected)
        self.committed = state

    @invariant()
    def count_step(self):
        TALLY["steps"] += 1


@pytest.mark.parametrize("backend, examples", [("pixel", 25), ("milvus", 25)])
def test_random_changes_and_kills_keep_the_invariant(backend, examples):
    machine = type(f"IndexMachine_{backend}", (IndexMachine,), {"backend": backend})
    machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=8,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    before = dict(TALLY)
    machine.TestCase().runTest()
    done = {k: TALLY[k] - before[k] for k in TALLY}
    print(
        f"\n{backend}: {done['sequences']} sequences, {done['steps']} steps, "
        f"{done['kills']} kills, {done['index_runs']} index runs: 0 lost, 0 stale, 0 orphaned"
    )
