"""The one hand-encoded Milvus call: the bytes pymilvus's own message class makes, and a head start
that never fails its caller."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pymilvus.grpc_gen import milvus_pb2

from revsearch.lite_preload import load_early, load_request


@pytest.mark.parametrize(
    ("collection", "db_name"),
    [("t", ""), ("revsearch_idx_g1", ""), ("c" * 255, ""), ("revsearch_x", "default"), ("a", "d" * 200)],
)
def test_the_request_is_the_one_pymilvus_would_send(collection, db_name):
    expected = milvus_pb2.LoadCollectionRequest(collection_name=collection, db_name=db_name).SerializeToString()
    assert load_request(collection, db_name) == expected
    parsed = milvus_pb2.LoadCollectionRequest.FromString(load_request(collection, db_name))
    assert (parsed.collection_name, parsed.db_name) == (collection, db_name)


def test_no_server_is_no_error(tmp_path):
    load_early(f"unix:{tmp_path / 'nothing.sock'}", "t")


def _state(client, collection: str):
    return client.get_load_state(collection)["state"]


def test_the_server_loads_what_is_asked_and_ignores_a_missing_collection(tmp_path):
    from pymilvus import MilvusClient
    from pymilvus.client.types import LoadState

    from revsearch import MilvusIndex
    from revsearch.lite_server import lite_server_class

    db = tmp_path / "p.db"
    index = MilvusIndex(8, collection="t", uri=str(db))
    index.add([f"k{i}" for i in range(50)], np.random.default_rng(0).random((50, 8), dtype=np.float32))
    index.close()
    server = lite_server_class()(str(db))
    assert server.init() and server.start()
    client = MilvusClient(uri=server.uds_path)
    try:
        load_early(server.uds_path, "missing")
        assert _state(client, "t") == LoadState.NotLoad
        load_early(server.uds_path, "t")
        deadline = time.monotonic() + 60
        while _state(client, "t") != LoadState.Loaded:
            assert time.monotonic() < deadline, _state(client, "t")
            time.sleep(0.05)
    finally:
        client.close()
        server.stop()


def test_the_serving_process_starts_its_server_without_milvus_lite_s_package_init():
    probe = (
        "import sys; from revsearch.lite_server import lite_server_class; server = lite_server_class(); "
        "print(server.__name__, 'milvus_lite' in sys.modules, 'pkg_resources' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    ).stdout
    assert out.split() == ["Server", "False", "False"]
