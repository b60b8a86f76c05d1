"""The Milvus server path: the same ``MilvusIndex`` code over a network URI, plus docker-compose.yml.

Servers, all reached through ``http://127.0.0.1:PORT`` (pymilvus's remote gRPC path, not Lite's file path):

* ``REVSEARCH_MILVUS_URI`` set: only that server (e.g. ``docker compose up -d``, then
  ``REVSEARCH_MILVUS_URI=http://localhost:19530``; ``REVSEARCH_MILVUS_TOKEN`` if auth is on). Its bulk
  import tests need a directory the server reads: ``REVSEARCH_MILVUS_BULK_DIR`` (and
  ``REVSEARCH_MILVUS_BULK_SERVER_DIR`` if the server sees it under another path); skipped otherwise.
* otherwise, started here: a real Milvus 2.3.5 standalone (``pip install milvus==2.3.5``: the embedded
  server wheel, etcd and local storage built in; skipped with the reason if not installed) and the
  milvus-lite engine listening on TCP (always available: proves features are detected, not guessed
  from the URI — same kind of URI, no HNSW, no bulk import).
* for the S3 bulk-import test, a second Milvus 2.3.5 standalone whose data lives in moto's S3 server
  (``pip install 'moto[server]==5.2.5'``; skipped without it), or, with ``REVSEARCH_MILVUS_URI``, the
  bucket at ``REVSEARCH_MILVUS_S3_ENDPOINT`` (e.g. docker compose's MinIO, ``http://localhost:9000``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from pymilvus import utility

from revsearch import MilvusIndex
from revsearch.errors import (
    BulkImportError,
    BulkImportUnsupportedError,
    IndexMismatchError,
    IndexNotFoundError,
    UnsupportedIndexError,
)
from revsearch.index.milvus_bulk import LocalBulkStorage, S3BulkStorage, import_connection
from revsearch.index.milvus_move import copy_collection

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL_URI = os.environ.get("REVSEARCH_MILVUS_URI", "")
TOKEN = os.environ.get("REVSEARCH_MILVUS_TOKEN", "")
ENGINES = ["external"] if EXTERNAL_URI else ["milvus-standalone", "milvus-lite-tcp"]
DIM, N, K = 48, 3000, 10


@dataclass
class Server:
    uri: str
    #: What the test expects of the engine; revsearch itself only learns it from the server's answer.
    has_hnsw: bool
    has_bulk_import: bool = False
    #: A directory this process writes and the server reads (bulk import files), and its path there.
    bulk_dir: Path | None = None
    bulk_server_dir: str | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _etcd_config(path: Path) -> Path:
    """An embedded-etcd config on free ports: the wheel's etcd would otherwise take 2380 (a second
    server on the machine, e.g. a parallel CI job, then dies on "bind: address already in use")."""
    peer, client = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    path.write_text(
        f"name: default\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\nlisten-client-urls: {client}\n"
        f"advertise-client-urls: {client}\n"
    )
    return path


def _wait_healthy(server, timeout: float = 120.0) -> None:
    """Poll Milvus's /healthz, failing fast (with the log's location) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.server_proc.poll() is not None:
            pytest.fail(
                f"Milvus standalone exited ({server.server_proc.returncode}); see {server.config.base_data_dir}/logs"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.webservice_port}/healthz", timeout=2) as r:
                if b"OK" in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"Milvus standalone not healthy after {timeout:.0f} s")


def _standalone(base: Path, settings: dict[str, str] | None = None) -> Iterator[Server]:
    """Milvus 2.3.5 standalone from the ``milvus`` wheel (its binaries unpack into ``base``);
    ``settings``: milvus.yaml keys to override, e.g. ``{"common.storageType": "minio"}``."""
    if importlib.util.find_spec("milvus") is None:
        pytest.skip(
            "embedded Milvus server not installed: `.venv/bin/pip install milvus==2.3.5`, "
            "or run against a server with REVSEARCH_MILVUS_URI=http://localhost:19530"
        )
    from milvus import MilvusServer

    server = MilvusServer(wait_for_started=False)
    server.set_base_dir(str(base))
    server.listen_port = _free_port()  # its other ports: the wheel picks free ones itself
    for key, value in (settings or {}).items():
        server.config.set(key, value)
    previous = os.environ.get("ETCD_CONFIG_PATH")
    os.environ["ETCD_CONFIG_PATH"] = str(_etcd_config(base / "etcd.yaml"))  # Milvus reads etcd.config.path
    try:
        server.start()
    finally:
        if previous is None:
            del os.environ["ETCD_CONFIG_PATH"]
        else:
            os.environ["ETCD_CONFIG_PATH"] = previous
    try:
        _wait_healthy(server)
        # bulk files inside the server's localStorage.path (the wheel sets it to <base>/data)
        yield Server(
            f"http://127.0.0.1:{server.listen_port}",
            has_hnsw=True,
            has_bulk_import=True,
            bulk_dir=base / "data" / "bulk",
        )
    finally:
        server.stop()
        server.cleanup()


def _lite_tcp(base: Path) -> Iterator[Server]:
    """The milvus-lite engine serving gRPC on a TCP port instead of its usual unix socket."""
    from milvus_lite.server import Server as LiteServer

    port = _free_port()
    lite = LiteServer(str(base / "lite.db"), address=f"127.0.0.1:{port}")
    if not lite.start():
        pytest.fail("milvus-lite did not start on a TCP port")
    try:
        _wait_for_port(port)
        yield Server(f"http://127.0.0.1:{port}", has_hnsw=False, has_bulk_import=False, bulk_dir=base / "bulk")
    finally:
        lite.stop()


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tmp_path_factory) -> Iterator[Server]:
    if request.param == "external":
        bulk = os.environ.get("REVSEARCH_MILVUS_BULK_DIR")
        yield Server(
            EXTERNAL_URI,
            has_hnsw=True,
            has_bulk_import=True,
            bulk_dir=Path(bulk) if bulk else None,
            bulk_server_dir=os.environ.get("REVSEARCH_MILVUS_BULK_SERVER_DIR"),
        )
        return
    start = _standalone if request.param == "milvus-standalone" else _lite_tcp
    yield from start(tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    queries = rng.normal(size=(20, DIM)).astype(np.float32)
    return [f"img/{i:05d}.jpg" for i in range(N)], vectors, queries


@pytest.fixture
def index(server, data) -> Iterator[MilvusIndex]:
    """A fresh, uniquely named collection holding ``data`` (dropped afterwards: servers are shared)."""
    idx = MilvusIndex(DIM, collection=f"t_{uuid.uuid4().hex[:12]}", uri=server.uri, token=TOKEN)
    idx.add(data[0], data[1])
    yield idx
    idx.drop()
    idx.close()


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and squared L2 distances of the k nearest rows, by numpy brute force."""
    d = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


@pytest.mark.server
def test_flat_search_equals_exact_numpy_top10(index, data):
    keys, vectors, queries = data
    want_idx, want_dist = exact_top_k(vectors, queries, K)
    got = index.search(queries, K)
    assert [[h.key for h in hits] for hits in got] == [[keys[i] for i in row] for row in want_idx]
    np.testing.assert_allclose([[h.distance for h in hits] for hits in got], want_dist, rtol=1e-4, atol=1e-4)


@pytest.mark.server
def test_upsert_never_duplicates_and_delete_removes(index, data):
    keys, vectors, _ = data
    assert len(index) == N
    moved = vectors[:50] + 100.0
    index.add(keys[:50], moved)  # the same keys again: replaced in place
    assert len(index) == N
    assert [h[0].key for h in index.search(moved[:5], 1)] == keys[:5]
    assert index.search(vectors[:1], 1)[0][0].key != keys[0]  # the old vector is gone
    index.remove(keys[:20])
    assert len(index) == N - 20
    assert sorted(index.keys()) == sorted(keys[20:])


@pytest.mark.server
def test_reopen_from_saved_config_answers_the_same(index, data, tmp_path):
    queries = data[2][:5]
    before = index.search(queries, K)
    again = MilvusIndex.load(tmp_path, index.config(), token=TOKEN)
    assert len(again) == N
    assert again.search(queries, K) == before
    again.close()


@pytest.mark.server
def test_dimension_mismatch_and_missing_collection_are_named(index, server):
    with pytest.raises(IndexMismatchError, match=f"{DIM}-d"):
        MilvusIndex(DIM + 16, collection=index.collection, uri=server.uri, token=TOKEN)
    with pytest.raises(IndexMismatchError, match="dimension 7"):
        index.search(np.zeros((1, 7), np.float32), 3)
    with pytest.raises(IndexMismatchError, match="dimension 7"):
        index.add(["x"], np.zeros((1, 7), np.float32))
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        MilvusIndex(DIM, collection=f"missing_{uuid.uuid4().hex[:8]}", uri=server.uri, token=TOKEN, create=False)


@pytest.mark.server
def test_hnsw_on_a_server_and_detected_where_missing(server, data):
    keys, vectors, queries = data
    name = f"h_{uuid.uuid4().hex[:12]}"
    if not server.has_hnsw:
        with pytest.raises(UnsupportedIndexError, match="does not support index type HNSW"):
            MilvusIndex(DIM, collection=name, uri=server.uri, token=TOKEN, index_type="HNSW")
        probe = MilvusIndex(DIM, collection=f"p_{name}", uri=server.uri, token=TOKEN)
        assert not probe.client.has_collection(name)  # nothing half-created is left behind
        probe.drop()
        probe.close()
        return
    hnsw = MilvusIndex(DIM, collection=name, uri=server.uri, token=TOKEN, index_type="HNSW")
    hnsw.add(keys, vectors)
    assert [h[0].key for h in hnsw.search(vectors[:50], 1)] == keys[:50]
    want_idx, _ = exact_top_k(vectors, queries, K)
    got = hnsw.search(queries, K)
    recall = np.mean([len({h.key for h in g} & {keys[i] for i in w}) / K for g, w in zip(got, want_idx)])
    assert recall >= 0.9, f"HNSW recall@{K} {recall:.2f}"
    hnsw.drop()
    hnsw.close()


# ---- bulk import: server-side where the server has it, upserts where it does not ------------------

BULK_MIN_ROWS = 1000  # in these tests: adds of 1,000+ rows take the bulk path


@pytest.fixture
def bulk_index(server) -> Iterator[MilvusIndex]:
    """An empty collection whose large adds go through bulk import files in ``server.bulk_dir``."""
    if server.bulk_dir is None:
        pytest.skip("bulk import against REVSEARCH_MILVUS_URI needs REVSEARCH_MILVUS_BULK_DIR")
    server.bulk_dir.mkdir(parents=True, exist_ok=True)
    idx = MilvusIndex(
        DIM,
        collection=f"b_{uuid.uuid4().hex[:12]}",
        uri=server.uri,
        token=TOKEN,
        bulk_storage=LocalBulkStorage(server.bulk_dir, server.bulk_server_dir),
        bulk_min_rows=BULK_MIN_ROWS,
    )
    yield idx
    idx.drop()
    idx.close()


def import_tasks(index: MilvusIndex) -> list[tuple[str, int]]:
    """(state, rows) of the server's own import tasks for the index's collection, oldest first."""
    with import_connection(index.uri, index.token, index.db_name) as using:
        tasks = utility.list_bulk_insert_tasks(0, index.collection, using=using)
    return [(t.state_name, t.row_count) for t in sorted(tasks, key=lambda t: t.task_id)]


@pytest.mark.server
def test_bulk_add_imports_where_the_server_has_it_and_upserts_where_not(bulk_index, server, data, caplog):
    keys, vectors, queries = data
    with caplog.at_level(logging.WARNING, logger="revsearch.index.milvus"):
        bulk_index.add(keys, vectors)
        assert bulk_index.supports_bulk_import is server.has_bulk_import  # learnt from the server's answer
        assert len(bulk_index) == N
        want_idx, want_dist = exact_top_k(vectors, queries, K)
        got = bulk_index.search(queries, K)
        assert [[h.key for h in hits] for hits in got] == [[keys[i] for i in row] for row in want_idx]
        np.testing.assert_allclose([[h.distance for h in hits] for hits in got], want_dist, rtol=1e-4, atol=1e-4)
        assert list(server.bulk_dir.iterdir()) == []  # the import files are removed afterwards
        if server.has_bulk_import:
            assert import_tasks(bulk_index) == [("Completed", N)]  # the server's record: one import of N rows
            assert not caplog.records
        else:
            bulk_index.add(keys[:BULK_MIN_ROWS], vectors[:BULK_MIN_ROWS])
            fallback = [r.getMessage() for r in caplog.records]
            assert len(fallback) == 1 and "has no bulk import" in fallback[0]  # said once, not per add
            with pytest.raises(BulkImportUnsupportedError, match="does not offer bulk import"):
                bulk_index.bulk_add(keys[:10], vectors[:10])


@pytest.mark.server
def test_bulk_readd_replaces_without_duplicates(bulk_index, server, data):
    keys, vectors, _ = data
    bulk_index.add(keys, vectors)
    moved = vectors[:1500] + 100.0
    bulk_index.add(keys[:1500], moved)  # the same keys again, by bulk import where the server has it
    assert len(bulk_index) == N
    assert sorted(bulk_index.keys()) == sorted(keys)  # every key exactly once
    np.testing.assert_allclose(bulk_index.vectors(keys[:3]), moved[:3])
    assert [h[0].key for h in bulk_index.search(moved[:5], 1)] == keys[:5]
    assert bulk_index.search(vectors[:1], 1)[0][0].key != keys[0]  # the old vector is gone
    if server.has_bulk_import:
        assert import_tasks(bulk_index) == [("Completed", N), ("Completed", 1500)]


@pytest.mark.server
def test_bulk_add_repeated_keys_escaped_keys_and_several_tasks(bulk_index, server, data):
    if not server.has_bulk_import:
        pytest.skip("this engine has no bulk import (the fallback is tested above)")
    keys, vectors, _ = data
    names = keys[:99] + ["photos/caf\udce9.jpg"] + keys[:10]
    given = np.vstack([vectors[:100], vectors[:10] + 50.0])
    bulk_index.bulk_add(names, given, rows_per_file=40)  # 100 distinct keys: tasks of 40, 40, 20
    assert import_tasks(bulk_index) == [("Completed", 40), ("Completed", 40), ("Completed", 20)]
    assert len(bulk_index) == 100
    assert sorted(bulk_index.keys()) == sorted(names[:100])  # the undecodable file name comes back as given
    np.testing.assert_allclose(bulk_index.vectors(keys[:10]), vectors[:10] + 50.0)  # the last one wins
    np.testing.assert_allclose(bulk_index.vectors(names[99:100]), vectors[99:100])


@pytest.mark.server
def test_bulk_import_failure_carries_the_servers_reason(bulk_index, server, data):
    if not server.has_bulk_import:
        pytest.skip("this engine has no bulk import")
    keys, vectors, _ = data
    nowhere = LocalBulkStorage(server.bulk_dir, server_directory="/nonexistent-revsearch-bulk")
    with pytest.raises(BulkImportError, match=r"(?i)import task \d+ .* failed: .*(no such file|not exist|not found)"):
        bulk_index.bulk_add(keys[:10], vectors[:10], storage=nowhere)
    assert list(server.bulk_dir.iterdir()) == []


@pytest.mark.server
def test_move_from_a_lite_file_copies_by_bulk_import_where_the_server_has_it(bulk_index, server, data, tmp_path):
    keys, vectors, queries = data
    source = MilvusIndex(DIM, collection=bulk_index.collection, uri=str(tmp_path / "lite.db"))
    try:
        source.add(keys, vectors)
        assert copy_collection(source, bulk_index, progress=False) == N
    finally:
        source.close()
    want_idx, _ = exact_top_k(vectors, queries, K)
    assert [[h.key for h in hits] for hits in bulk_index.search(queries, K)] == [
        [keys[i] for i in row] for row in want_idx
    ]
    if server.has_bulk_import:
        assert import_tasks(bulk_index) == [("Completed", N)]  # copied by one server-side import


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[tuple[Server, S3BulkStorage]]:
    """A Milvus whose data lives in an S3 bucket (as with docker-compose's MinIO), and that bucket.

    With ``REVSEARCH_MILVUS_URI``: that server and ``REVSEARCH_MILVUS_S3_ENDPOINT`` (e.g.
    ``http://localhost:9000``; ``REVSEARCH_MILVUS_S3_BUCKET``/``_ACCESS_KEY``/``_SECRET_KEY`` default to
    docker-compose's ``a-bucket``/``minioadmin``/``minioadmin``). Otherwise: moto's S3 server on a free
    port and a Milvus 2.3.5 standalone configured to store its data there.
    """
    env = os.environ.get
    if EXTERNAL_URI:
        if not env("REVSEARCH_MILVUS_S3_ENDPOINT"):
            pytest.skip("S3 bulk import against REVSEARCH_MILVUS_URI needs REVSEARCH_MILVUS_S3_ENDPOINT")
        yield (
            Server(EXTERNAL_URI, has_hnsw=True, has_bulk_import=True),
            S3BulkStorage(
                env("REVSEARCH_MILVUS_S3_BUCKET", "a-bucket"),
                env("REVSEARCH_MILVUS_S3_ENDPOINT"),
                env("REVSEARCH_MILVUS_S3_ACCESS_KEY", "minioadmin"),
                env("REVSEARCH_MILVUS_S3_SECRET_KEY", "minioadmin"),
            ),
        )
        return
    if importlib.util.find_spec("moto") is None:
        pytest.skip("S3 test server not installed: `.venv/bin/pip install 'moto[server]==5.2.5'`")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    port = _free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    s3.start()
    try:
        storage = S3BulkStorage("a-bucket", f"http://127.0.0.1:{port}", "minioadmin", "minioadmin")
        storage.client().create_bucket(Bucket="a-bucket")
        settings = {
            "common.storageType": "minio",
            "minio.address": "127.0.0.1",
            "minio.port": str(port),
            "minio.bucketName": "a-bucket",
        }
        for server in _standalone(tmp_path_factory.mktemp("milvus-s3"), settings):
            yield server, storage
    finally:
        s3.stop()


@pytest.mark.server
def test_bulk_import_through_an_s3_bucket(s3_server, data):
    server, storage = s3_server
    keys, vectors, queries = data
    idx = MilvusIndex(
        DIM,
        collection=f"s_{uuid.uuid4().hex[:12]}",
        uri=server.uri,
        token=TOKEN,
        bulk_storage=storage,
        bulk_min_rows=BULK_MIN_ROWS,
    )
    try:
        idx.add(keys, vectors)
        idx.add(keys[:1500], vectors[:1500] + 100.0)
        assert import_tasks(idx) == [("Completed", N), ("Completed", 1500)]
        assert len(idx) == N and sorted(idx.keys()) == sorted(keys)
        want_idx, _ = exact_top_k(np.vstack([vectors[:1500] + 100.0, vectors[1500:]]), queries, K)
        assert [[h.key for h in hits] for hits in idx.search(queries, K)] == [[keys[i] for i in r] for r in want_idx]
        listed = storage.client().list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix + "/")
        assert listed.get("KeyCount", 0) == 0  # the uploaded files are deleted after the import
    finally:
        idx.drop()
        idx.close()


def test_bulk_storage_on_a_lite_file_falls_back_to_upserts(tmp_path, data, caplog):
    keys, vectors, queries = data
    lite = MilvusIndex(
        DIM,
        collection="bulk",
        uri=str(tmp_path / "lite.db"),
        bulk_storage=LocalBulkStorage(tmp_path / "bulk"),
        bulk_min_rows=BULK_MIN_ROWS,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="revsearch.index.milvus"):
            lite.add(keys, vectors)
        assert not lite.supports_bulk_import
        assert ["has no bulk import" in r.getMessage() for r in caplog.records] == [True]
        assert len(lite) == N
        assert [h[0].key for h in lite.search(vectors[:20], 1)] == keys[:20]
    finally:
        lite.close()


# ---- docker-compose.yml: structure, always checked (no Docker needed) ----------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_three_standalone_services(compose):
    assert set(compose["services"]) == {"etcd", "minio", "standalone"}
    assert compose["services"]["standalone"]["command"] == ["milvus", "run", "standalone"]
    env = compose["services"]["standalone"]["environment"]
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and any(c.isdigit() for c in tag), f"{name}: image {image!r} is not pinned"
    assert compose["services"]["standalone"]["image"].startswith("milvusdb/milvus:v2.")


def test_compose_services_have_health_checks_and_named_volumes(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: no health check command"
        for mount in service["volumes"]:
            source = mount.split(":")[0]
            assert source in declared, f"{name}: volume {source!r} is not a declared named volume"
    assert len(declared) == 3


def test_compose_exposes_grpc_and_waits_for_dependencies(compose):
    standalone = compose["services"]["standalone"]
    assert "19530:19530" in standalone["ports"]
    assert any("9091" in p for p in standalone["ports"])  # the health endpoint
    depends = standalone["depends_on"]
    assert set(depends) == {"etcd", "minio"}
    assert all(depends[s]["condition"] == "service_healthy" for s in depends)
