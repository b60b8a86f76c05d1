"""The one hand-encoded Milvus call: the bytes pymilvus's own message class makes, and a head start
that never fails its caller."""

from __future__ import annotations

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
