"""Any file name works as a key on every index kind: quotes, backslashes, newlines, control
characters, unicode, undecodable bytes and very long names never break a Milvus expression."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crash_ops import write_image
from revsearch import ExactIndex, IVFIndex, MilvusIndex

REPO = Path(__file__).resolve().parents[1]
DIM = 6
#: Names the strategies might miss: each character Milvus expressions treat as syntax, the escape
#: prefixes themselves, undecodable bytes (as Python's file-system decoding gives them), a long path.
NAMES = [
    "John's photo.jpg",
    'say "cheese".jpg',
    "back\\slash.jpg",
    "new\nline.jpg",
    "tab\tbell\x07del\x7f.jpg",
    "revsearch-q:John%27s.jpg",
    "revsearch-b64:abc",
    "caf\udce9.png",
    "%27 percent.jpg",
    "/very/" + "long'name/" * 250 + "x.jpg",
]
names = st.lists(st.text(min_size=1, max_size=40) | st.sampled_from(NAMES), min_size=1, max_size=6, unique=True)


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    index = MilvusIndex(DIM, collection="names", uri=str(tmp_path_factory.mktemp("names") / "names.db"))
    yield index
    index.close()


def _check_round_trip(index, keys: list[str], rng: np.random.Generator) -> None:
    vectors = rng.normal(size=(len(keys), DIM)).astype(np.float32) * 10
    index.add(keys, vectors)
    index.add(keys, vectors)  # an upsert: replaced, never duplicated
    assert index.contains(keys) == set(keys)
    np.testing.assert_allclose(index.vectors(keys), vectors, rtol=1e-5)
    assert set(keys) <= set(index.keys())
    for key, hits in zip(keys, index.search(vectors, 1, allowed=keys)):
        assert hits[0].key == key
    assert [h[0].key for h in index.range_search(vectors, 1e-3, allowed=keys)] == keys
    index.remove(keys)
    assert index.contains(keys) == set()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=names, seed=st.integers(0, 2**16))
def test_any_key_round_trips_in_milvus(milvus, keys, seed):
    _check_round_trip(milvus, keys, np.random.default_rng(seed))
    assert len(milvus) == 0


@settings(max_examples=30, deadline=None)
@given(keys=names, seed=st.integers(0, 2**16))
def test_any_key_round_trips_in_memory(keys, seed):
    rng = np.random.default_rng(seed)
    ivf = IVFIndex.fit(rng.normal(size=(8, DIM)).astype(np.float32), 2, nprobe=2)
    for index in (ExactIndex(DIM), ivf):
        _check_round_trip(index, keys, rng)


@pytest.mark.slow
def test_the_command_line_indexes_queries_syncs_and_moves_odd_names_in_milvus(tmp_path):
    """A folder whose file names need escaping: index, query (each file first), info, sync after a
    deletion, move to another Lite file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = ["John's photo.png", "back\\slash.png", "new\nline.png", 'quote".png', "ctl\x01.png", "plain.png"]
    for i, name in enumerate(odd):
        write_image(folder / name, i)
    write_image(tmp_path / "undecodable.png", len(odd))
    shutil.copy(tmp_path / "undecodable.png", os.fsencode(folder) + b"/caf\xe9.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "revsearch", *args], cwd=tmp_path, env=env, capture_output=True, timeout=300
        )
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        return done

    cli("index", str(folder), "--features", "pixel", "--backend", "milvus", "--quiet")
    for name in odd:
        hits = json.loads(cli("query", str(folder / name), "-k", "1", "--json").stdout)
        assert Path(hits[0]["path"]).name == name
    assert json.loads(cli("info").stdout)["consistent"]
    (folder / "John's photo.png").unlink()
    (folder / "back\\slash.png").unlink()
    cli("index", str(folder), "--features", "pixel", "--backend", "milvus", "--quiet")
    cli("move", "--uri", str(tmp_path / "moved.db"))
    info = json.loads(cli("info").stdout)
    assert info["vectors"] == len(odd) - 1 and info["consistent"]  # 7 files, 2 deleted
