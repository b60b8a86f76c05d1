"""Milvus Lite through MilvusClient: same neighbours as exact search; upsert, delete, reopen."""

from __future__ import annotations

import numpy as np
import pytest

from revsearch import ExactIndex, MilvusIndex
from revsearch.errors import IndexMismatchError, IndexNotFoundError, UnsupportedIndexError
from revsearch.index.milvus import LITE_GRPC_OPTIONS


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(3000, 48)).astype(np.float32)
    queries = rng.normal(size=(20, 48)).astype(np.float32)
    return [f"item-{i}" for i in range(3000)], vectors, queries


@pytest.fixture(scope="module")
def shared_lite_file(tmp_path_factory):
    """One Lite file for the module's tests, its server kept running by an open index in between
    (starting one takes about 0.5 s); each test gets a collection of its own."""
    uri = str(tmp_path_factory.mktemp("lite") / "m.db")
    keeper = MilvusIndex(48, collection="keeper", uri=uri)
    yield uri
    keeper.close()


@pytest.fixture
def milvus(shared_lite_file, data, request):
    index = MilvusIndex(48, collection=f"t{abs(hash(request.node.name))}", uri=shared_lite_file)
    index.add(data[0], data[1])
    yield index
    index.client.drop_collection(index.collection)
    index.close()


@pytest.fixture
def milvus_alone(tmp_path, data):
    """An index on a Lite file of its own (held by no other index of this process)."""
    index = MilvusIndex(48, collection="t", uri=str(tmp_path / "m.db"))
    index.add(data[0], data[1])
    yield index
    index.close()


def test_flat_search_matches_exact(milvus, data):
    keys, vectors, queries = data
    exact = ExactIndex(48)
    exact.add(keys, vectors)
    for got, want in zip(milvus.search(queries, 10), exact.search(queries, 10)):
        assert [h.key for h in got] == [h.key for h in want]
        np.testing.assert_allclose([h.distance for h in got], [h.distance for h in want], rtol=1e-4)


def test_upsert_replaces_and_delete_removes(milvus, data):
    keys, vectors, _ = data
    milvus.add(keys[:100], vectors[:100] + 100.0)  # same keys again: replaced, not duplicated
    assert len(milvus) == 3000
    assert milvus.search(vectors[:1] + 100.0, 1)[0][0].key == keys[0]
    milvus.remove(keys[:10])
    assert len(milvus) == 2990
    assert sorted(milvus.keys()) == sorted(keys[10:])


def test_reopen_from_file_answers_the_same(tmp_path, data):
    keys, vectors, queries = data
    uri = str(tmp_path / "reopen.db")
    first = MilvusIndex(48, collection="r", uri=uri)
    first.add(keys, vectors)
    before = first.search(queries[:3], 5)
    config = first.config()
    first.close()
    again = MilvusIndex.load(tmp_path, config)
    assert [[h.key for h in r] for r in again.search(queries[:3], 5)] == [[h.key for h in r] for r in before]
    again.close()


def test_errors_name_the_cause(milvus, tmp_path):
    with pytest.raises(IndexMismatchError, match="dimension 7"):
        milvus.search(np.zeros((1, 7), np.float32), 3)
    with pytest.raises(IndexMismatchError, match="48-d"):
        MilvusIndex(64, collection=milvus.collection, uri=milvus.uri)
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        MilvusIndex(48, collection="missing", uri=milvus.uri, create=False)


def test_ivf_flat_finds_true_neighbours(tmp_path, data):
    keys, vectors, _ = data
    index = MilvusIndex(
        48, collection="x", uri=str(tmp_path / "ivf.db"), index_type="IVF_FLAT", index_params={"nlist": 16}
    )
    index.add(keys, vectors)
    assert [h[0].key for h in index.search(vectors[:20], 1)] == keys[:20]
    index.close()


def test_unsupported_index_type_is_detected_and_explained(tmp_path, data):
    """Milvus Lite 2.5 offers FLAT, IVF_FLAT and AUTOINDEX; a server also offers HNSW."""
    uri = str(tmp_path / "hnsw.db")
    try:
        index = MilvusIndex(48, collection="h", uri=uri, index_type="HNSW")
    except UnsupportedIndexError as exc:
        assert "does not support index type HNSW" in str(exc)
        probe = MilvusIndex(48, collection="probe", uri=uri)
        assert not probe.client.has_collection("h")  # nothing half-created is left behind
        probe.close()
        return
    index.add(data[0], data[1])
    assert [h[0].key for h in index.search(data[1][:20], 1)] == data[0][:20]
    index.close()


_OPEN_IN_CHILD = """
import sys
from revsearch import MilvusIndex
from revsearch.errors import LiteFileBusyError
try:
    index = MilvusIndex(48, collection="t", uri=sys.argv[1])
except LiteFileBusyError as exc:
    print("BUSY", exc)
else:
    print("OPEN", len(index))
    index.close()
"""


def _open_in_child(uri: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _OPEN_IN_CHILD, uri], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_second_process_gets_a_clear_error_then_opens_after_close(milvus_alone):
    out = _open_in_child(milvus_alone.uri)
    assert out.startswith("BUSY") and "open in process" in out and "one process at a time" in out
    assert _open_in_child(milvus_alone.uri).startswith("BUSY")  # the lock holds after a failed attempt
    assert len(milvus_alone) == 3000  # the holder is unaffected
    milvus_alone.close()
    assert _open_in_child(milvus_alone.uri) == "OPEN 3000"


def test_lite_file_name_rule_is_checked(tmp_path):
    from revsearch.errors import RevsearchError

    with pytest.raises(RevsearchError, match="at most 36"):
        MilvusIndex(8, uri=str(tmp_path / ("x" * 40 + ".db")))


@pytest.mark.parametrize("view_size", [40, 1000, 2500])
def test_search_within_allowed_keys_matches_exact(milvus, data, monkeypatch, view_size):
    """One filter (40 keys), chunked filters (1,000 keys in chunks of 300), and the dense-view path
    (2,500 of 3,000: unfiltered search with a larger limit, then filters for queries left short)."""
    monkeypatch.setattr("revsearch.index.milvus.FILTER_CHUNK_KEYS", 300)
    keys, vectors, queries = data
    allowed = [keys[i] for i in np.random.default_rng(view_size).choice(len(keys), view_size, replace=False)]
    exact = ExactIndex(48)
    exact.add(keys, vectors)
    for got, want in zip(milvus.search(queries, 10, allowed=allowed), exact.search(queries, 10, allowed=allowed)):
        assert [h.key for h in got] == [h.key for h in want]


@pytest.mark.parametrize("fraction", [0.01, 0.05])  # ~30 hits per query, and ~150: above the first limit
def test_range_search_matches_exact(milvus, data, fraction):
    keys, vectors, _ = data
    exact = ExactIndex(48)
    exact.add(keys, vectors)
    radius = float(np.quantile(((vectors[:50, None] - vectors[None]) ** 2).sum(-1), fraction))
    allowed = keys[::3]
    for kwargs in ({}, {"allowed": allowed}):
        got = milvus.range_search(vectors[:50], radius, **kwargs)
        want = exact.range_search(vectors[:50], radius, **kwargs)
        assert [[h.key for h in row] for row in got] == [[h.key for h in row] for row in want]


def test_least_similar_is_refused_with_the_reason(milvus, data):
    with pytest.raises(ValueError, match="nearest neighbours only"):
        milvus.search(data[2][:1], 5, reverse=True)


def test_a_dropped_channel_is_retried_once_on_a_new_connection(milvus_alone, data):
    keys, vectors, _ = data
    milvus_alone.client._handler._channel.close()  # what a GOAWAY or a reset leaves behind
    assert milvus_alone.search(vectors[:1], 1)[0][0].key == keys[0]
    assert len(milvus_alone) == 3000


def test_lite_connections_send_no_idle_keepalive_pings(milvus_alone):
    """pymilvus pings every 10 s by default; Milvus Lite's gRPC server answers that with GOAWAY
    too_many_pings, so revsearch's Lite clients (first and retried) do not ping."""
    assert milvus_alone.client._handler._grpc_options == LITE_GRPC_OPTIONS
    milvus_alone.client._handler._channel.close()
    milvus_alone.search(np.zeros((1, 48), np.float32), 1)
    assert milvus_alone.client._handler._grpc_options == LITE_GRPC_OPTIONS


_LOAD_IN_CHILD = """
import json, sys
from revsearch.errors import LiteFileBusyError
from revsearch.index.registry import load_index
try:
    index = load_index(json.loads(sys.argv[1]))
except LiteFileBusyError as exc:
    print("BUSY", exc)
else:
    print("OPEN", len(index))
    index.close()
"""


@pytest.mark.slow
def test_load_index_keeps_the_one_process_rule(tmp_path, data):
    """``load_index`` locks a Lite file: a file held elsewhere gives the busy error, and closing the
    index releases the file."""
    import json
    import subprocess
    import sys

    from revsearch.index.registry import load_index

    index = MilvusIndex(48, collection="early", uri=str(tmp_path / "early.db"))
    index.add(data[0][:100], data[1][:100])
    config = index.config()

    def load_in_child() -> str:
        args = [sys.executable, "-c", _LOAD_IN_CHILD, json.dumps(config)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert load_in_child().startswith("BUSY")
    index.close()
    assert load_in_child() == "OPEN 100"
    again = load_index(config)
    assert len(again) == 100
    again.close()
    assert load_in_child() == "OPEN 100"
