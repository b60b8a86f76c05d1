"""Snapshot reads: queries that run while another process syncs or rebuilds the index answer from the
last committed state or the new one, whole (never a mix of the two, never a missing file), on every kind.

A writer process after another runs ``revsearch index`` on a folder that switches between two states
(two images removed and four added, and back; every third run a ``--rebuild``), while a reader process
loops ``SearchIndex.load(...).query(...)`` and writes down the keys each query returns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from test_no_traceback import OPTIONS

from helpers import caltech_subset
from revsearch import SearchIndex
from revsearch.features.pixel import PixelFeatures

#: Updates per kind: at least this many writer runs, and for at least this many seconds.
WRITER_RUNS, UPDATING_S = 6, 10

READER = """
import json, os, sys
from revsearch import SearchIndex

directory, query, stop = sys.argv[1:4]
while not os.path.exists(stop):  # no pause: Lite waiters take the file in turn, first come first served
    try:
        index = SearchIndex.load(directory)
        try:
            print(json.dumps(sorted(hit.key for hit in index.query(query, k=1000))), flush=True)
        finally:
            index.close()
    except Exception as exc:
        print(json.dumps(f"{type(exc).__name__}: {exc}"), flush=True)
"""


def revsearch(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "revsearch", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["exact", "kmeans", "milvus"])
def test_queries_during_syncs_and_rebuilds_see_one_committed_state_whole(kind, tmp_path):
    files = caltech_subset()[:14]
    folder, index_dir, stop = tmp_path / "img", tmp_path / "idx", tmp_path / "stop"
    folder.mkdir()
    names = [folder / f"{i:02d}_{p.parent.name}_{p.name}" for i, p in enumerate(files)]
    for src, dst in zip(files[:10], names[:10]):
        shutil.copy(src, dst)
    states = [sorted(map(str, names[:10])), sorted(map(str, names[:8] + names[10:]))]
    build = ["index", folder, "--index-dir", index_dir, "--backend", kind, *OPTIONS, "--pca-dim", "0"]
    build += ["--n-clusters", "2"] if kind == "kmeans" else []
    done = revsearch(*build)
    assert done.returncode == 0, done.stderr

    log = tmp_path / "answers.jsonl"
    with open(log, "w") as out:
        reader = subprocess.Popen([sys.executable, "-c", READER, str(index_dir), str(names[0]), str(stop)], stdout=out)
    runs, writer_errors = 0, []
    deadline = time.monotonic() + UPDATING_S
    while time.monotonic() < deadline or runs < WRITER_RUNS:
        runs += 1
        new = runs % 2  # the folder switches to states[new]
        for path in names[8:10]:
            path.unlink() if new else shutil.copy(files[names.index(path)], path)
        for path in names[10:]:
            shutil.copy(files[names.index(path)], path) if new else path.unlink()
        done = revsearch(*build, "--rebuild") if runs % 3 == 0 else revsearch("index", folder, "--index-dir", index_dir)
        if done.returncode:
            writer_errors.append(done.stderr.strip())
    stop.touch()
    reader.wait(timeout=120)
    answers = [json.loads(line) for line in log.read_text().splitlines()]

    errors = [a for a in answers if isinstance(a, str)]
    mixed = [a for a in answers if not isinstance(a, str) and a not in states]
    seen = {i for i, state in enumerate(states) if state in answers}
    assert not writer_errors and not errors and not mixed, (writer_errors, errors, [len(m) for m in mixed])
    assert seen == {0, 1}, (runs, len(answers), seen)  # the queries did run during updates


def test_a_reader_looping_without_pause_does_not_keep_a_lite_writer_out(tmp_path):
    """A reader process queries a Milvus Lite index in a loop, with no pause, while this process updates it
    and then rebuilds it, holding the file from its first opening (as the App or a notebook does): the
    rebuild asks for a file its process already holds, so it must not wait behind the reader waiting for
    that file (it did until the reader's 10 s ran out), and the reader gets the file back afterwards."""
    files = [str(p) for p in caltech_subset()[:5]]
    index_dir, query, stop, log = tmp_path / "idx", files[0], tmp_path / "stop", tmp_path / "answers.jsonl"
    build = {"backend": "milvus", "extractor": PixelFeatures(8), "pca_dim": None, "progress": False}
    SearchIndex.build(files[:4], index_dir, **build)[0].close()
    with open(log, "w") as out:
        reader = subprocess.Popen([sys.executable, "-c", READER, index_dir, query, stop], stdout=out)
    try:
        while not log.read_text() and reader.poll() is None:  # the reader is in its loop
            time.sleep(0.1)
        index = SearchIndex.load(index_dir)  # holds the file: the reader's next query waits for it
        try:
            index.sync(files)
            rebuilt, _ = SearchIndex.build(files[1:], index_dir, **build)
            rebuilt.close()
        finally:
            index.close()
        answered = len(log.read_text().splitlines())
        while len(log.read_text().splitlines()) == answered and reader.poll() is None:
            time.sleep(0.1)  # the reader's next answer, from the rebuilt index
    finally:
        stop.touch()
        reader.wait(timeout=120)
    answers = [json.loads(line) for line in log.read_text().splitlines()]
    assert [a for a in answers if isinstance(a, str)] == [] and answers[-1] == sorted(files[1:]), answers
