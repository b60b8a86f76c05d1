"""Ask a Lite server that just started to load a collection, before pymilvus is imported.

Loading a collection takes a Lite server about 0.17 s even for a few vectors, and a process that
serves a Lite file (:mod:`revsearch.lite_server`) spends its first 0.7-0.9 s importing pymilvus. This
module sends the one ``LoadCollection`` call with grpcio alone (pymilvus's own transport; its
message encoded here), so that the server loads while the import runs, and the first client finds the
collection loaded. It is a head start only: any failure is ignored, and the client's own open loads
the collection as always (a second ``LoadCollection`` on a loaded collection returns at once).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from . import grpc_quiet  # noqa: F401  (before grpc)

#: The gRPC method (milvus.proto.milvus.MilvusService.LoadCollection).
LOAD_COLLECTION = "/milvus.proto.milvus.MilvusService/LoadCollection"
#: Field numbers of ``LoadCollectionRequest`` in milvus.proto.
DB_NAME_FIELD, COLLECTION_NAME_FIELD = 2, 3
#: How long the call may take (a large collection loads for seconds; nobody waits on this call).
TIMEOUT_S = 600.0

logger = logging.getLogger(__name__)


class Preload(NamedTuple):
    """A collection a process is about to open."""

    collection: str
    db_name: str = ""

    @classmethod
    def of(cls, config: dict) -> Preload | None:
        """The collection a Milvus index ``config`` opens (None when it names none)."""
        collection = config.get("collection")
        return cls(collection, config.get("db_name") or "") if isinstance(collection, str) and collection else None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def load_request(collection: str, db_name: str = "") -> bytes:
    """A serialized ``LoadCollectionRequest`` for ``collection`` (empty fields are left out, as
    protobuf does)."""
    db = _string_field(DB_NAME_FIELD, db_name) if db_name else b""
    return db + _string_field(COLLECTION_NAME_FIELD, collection)


def load_early(server_uri: str, collection: str, db_name: str = "") -> None:
    """Ask the Lite server at ``server_uri`` (``unix:<socket>``) to load ``collection``; waits for
    the answer, and ignores any failure (e.g. no such collection yet)."""
    try:
        import grpc

        with grpc.insecure_channel(server_uri) as channel:
            channel.unary_unary(LOAD_COLLECTION)(load_request(collection, db_name), timeout=TIMEOUT_S)
    except Exception:
        logger.debug("early load of %s at %s failed", collection, server_uri, exc_info=True)
