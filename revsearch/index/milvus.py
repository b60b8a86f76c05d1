"""Vectors in Milvus through pymilvus's ``MilvusClient``: a Milvus Lite file (``uri="revsearch.db"``)
or a server (``uri="http://host:19530"``, plus ``token`` / ``db_name``), same code."""

from __future__ import annotations

import atexit
import base64
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from revsearch.crashpoints import write_point
from revsearch.errors import (
    BulkImportUnsupportedError,
    IndexMismatchError,
    IndexNotFoundError,
    RevsearchError,
    UnsupportedIndexError,
)
from revsearch.index.hits import Hit
from revsearch.index.lite_lock import LiteFileLock, stop_lite_server
from revsearch.index.milvus_bulk import (
    IMPORT_TIMEOUT,
    ROWS_PER_FILE,
    BulkStorage,
    bulk_import,
    import_connection,
    supports_bulk_import,
)
from revsearch.index.milvus_uri import DEFAULT_URI, check_lite_file_name, is_lite_uri

logger = logging.getLogger(__name__)

KEY_FIELD, VECTOR_FIELD = "key", "vector"
MAX_KEY_LENGTH = 4096
INSERT_BATCH = 2000
#: Seconds a write (upsert, delete) may take, pymilvus's retries included: pymilvus retries a failing write
#: 75 times by default (minutes on a full disk); a batch takes well under a second when all is well.
WRITE_TIMEOUT_S = 30.0
#: ``add`` uses server-side bulk import (when ``bulk_storage`` is set and the server has it) from this
#: many rows up; below it, upserts are as fast or faster (an import task + reload costs ~10 s whatever
#: its size; docs/scale-out.md has the measurements).
BULK_MIN_ROWS = 200_000
QUERY_BATCH = 256
#: Milvus's largest ``limit`` (top-k) per search.
MAX_LIMIT = 16384
#: First ``limit`` of a range search (raised for the queries that fill it).
RANGE_FIRST_LIMIT = 64
#: Keys per ``key in [...]`` filter: a view is searched by filter (10-14x faster than fetching its
#: vectors, docs/benchmarks.md), a larger one in chunks of this many keys, merged.
FILTER_CHUNK_KEYS = 50_000
#: A view with at least this fraction of the collection is first searched unfiltered with a larger
#: limit; queries that then have k hits from the view are exact, the others fall back to filters.
DENSE_VIEW_FRACTION = 0.5
#: gRPC options for Milvus Lite: no keepalive pings (pymilvus pings every 10 s; Lite's gRPC server
#: answers pings more often than every 5 minutes with GOAWAY "too_many_pings" and closes the channel).
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}
#: Parts of a Milvus error message that mean the channel dropped (worth one retry on a new client).
_DROPPED_CHANNEL = ("closed channel", "UNAVAILABLE", "GOAWAY", "Socket closed", "Connection reset")
#: Index build and search parameters per Milvus index type.
INDEX_TYPES = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 64}),
    "AUTOINDEX": ({}, {}),
}
#: Milvus read consistency: Strong (default: "add then query" needs it) or weaker, for latency on a busy
#: cluster (Milvus Lite behaves as Strong whatever is asked).
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
#: Connecting to a Lite file is tried this often, this many seconds apart: the server of a process
#: that was just killed may still hold the file (it stops once it sees its parent gone).
START_ATTEMPTS, RETRY_WAIT_S = 5, 2.0
#: Collection settings kept in ``config()`` (besides where the collection is).
_SETTINGS = ("metric", "index_type", "index_params", "search_params", "consistency_level")


#: Keys that are not valid UTF-8 (file names with undecodable bytes) are stored base64-escaped.
_BASE64_KEY = "revsearch-b64:"
#: Keys with a character that a Milvus expression could take as syntax (quotes, backslash, control
#: characters) are stored with those characters percent-escaped: pymilvus writes keys given as
#: ``ids=`` into an expression, and Milvus Lite does so itself on upsert. Other keys are stored as is.
_QUOTED_KEY = "revsearch-q:"
_EXPRESSION_SYNTAX = re.compile(r"['\"\\\x00-\x1f\x7f]")
_KEPT_IN_QUOTED = "".join(chr(c) for c in range(32, 127) if chr(c) not in "'\"\\%")


def to_milvus_key(key: str) -> str:
    """The stored form of ``key``: itself, or escaped so that no expression can be broken by it."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return _BASE64_KEY + base64.urlsafe_b64encode(key.encode("utf-8", "surrogateescape")).decode("ascii")
    if _EXPRESSION_SYNTAX.search(key) or key.startswith((_BASE64_KEY, _QUOTED_KEY)):
        return _QUOTED_KEY + quote(key, safe=_KEPT_IN_QUOTED)
    return key


def from_milvus_key(stored: str) -> str:
    """Inverse of :func:`to_milvus_key`."""
    if stored.startswith(_BASE64_KEY):
        return base64.urlsafe_b64decode(stored[len(_BASE64_KEY) :]).decode("utf-8", "surrogateescape")
    if stored.startswith(_QUOTED_KEY):
        return unquote(stored[len(_QUOTED_KEY) :])
    return stored


def connect(uri: str = DEFAULT_URI, token: str = "", db_name: str = "", fresh: bool = False) -> MilvusClient:
    """A MilvusClient for a Lite file path or a server URI (``fresh``: a new channel, not a shared one)."""
    options = {}
    if is_lite_uri(uri):
        check_lite_file_name(Path(uri).name)
        Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).expanduser().resolve())
        options["grpc_options"] = LITE_GRPC_OPTIONS
    attempts = START_ATTEMPTS if is_lite_uri(uri) else 1
    for attempt in range(attempts):
        try:
            return MilvusClient(uri=uri, token=token, db_name=db_name, dedicated=fresh, **options)
        except Exception as exc:
            if attempt == attempts - 1:
                raise RevsearchError(f"cannot connect to Milvus at {uri!r}: {exc}") from exc
            stop_lite_server(uri)  # start ours afresh and try again
            time.sleep(RETRY_WAIT_S)


def open_lite(uri: str) -> LiteFileLock | None:
    """This process's lock on the Lite file ``uri`` (None for a server URI); :class:`LiteFileBusyError` if busy."""
    if not is_lite_uri(uri):
        return None
    path = Path(uri).expanduser().resolve()
    check_lite_file_name(path.name)
    lock = LiteFileLock(path)
    lock.acquire()
    return lock


def is_dropped_channel(exc: Exception) -> bool:
    """Whether a Milvus error says the gRPC channel was closed or lost (GOAWAY, reset)."""
    return isinstance(exc, MilvusException) and any(s in str(exc.message) for s in _DROPPED_CHANNEL)


def key_filter(keys: list[str]) -> str:
    """A filter expression matching these keys (as stored: see :func:`to_milvus_key`)."""
    return f"{KEY_FIELD} in {json.dumps([to_milvus_key(k) for k in keys], ensure_ascii=False)}"


def _key_chunks(keys: list[str]) -> list[list[str]]:
    """``keys`` in chunks of at most ``FILTER_CHUNK_KEYS`` (one ``key in [...]`` filter each)."""
    return [keys[start : start + FILTER_CHUNK_KEYS] for start in range(0, len(keys), FILTER_CHUNK_KEYS)]


def _over_key_chunks(n_queries: int, allowed: list[str], run: Callable[[str], list[list[Hit]]]) -> list[list[Hit]]:
    """``run(filter)`` for each ``key in [...]`` filter of ``FILTER_CHUNK_KEYS`` allowed keys; each
    query's hits over all chunks, nearest first."""
    merged: list[list[Hit]] = [[] for _ in range(n_queries)]
    for chunk in _key_chunks(allowed):
        for row, hits in zip(merged, run(key_filter(chunk))):
            row.extend(hits)
    for row in merged:
        row.sort(key=lambda h: h.distance)
    return merged


class MilvusIndex:
    """One Milvus collection per index: VARCHAR primary key (path or sample id) + float vector."""

    kind = "milvus"
    #: The most hits one search returns (more: :meth:`nearest_pages`).
    max_limit = MAX_LIMIT
    #: Milvus searches return nearest neighbours only.
    supports_least_similarity = False

    def __init__(
        self,
        dim: int,
        collection: str = "revsearch",
        uri: str = DEFAULT_URI,
        token: str = "",
        db_name: str = "",
        metric: str = "L2",
        index_type: str = "FLAT",
        index_params: dict | None = None,
        search_params: dict | None = None,
        create: bool = True,
        overwrite: bool = False,
        consistency_level: str = "Strong",
        bulk_storage: BulkStorage | None = None,
        bulk_min_rows: int = BULK_MIN_ROWS,
    ):
        """``bulk_storage``: where bulk-import files go (see :mod:`revsearch.index.milvus_bulk`); with it,
        ``add`` of at least ``bulk_min_rows`` rows imports them server-side where the server offers
        bulk import, and upserts where it does not (Milvus Lite). Runtime only: not in ``config()``."""
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {sorted(INDEX_TYPES)}, got {index_type!r}")
        if metric not in ("L2", "COSINE", "IP"):
            raise ValueError(f"metric must be L2, COSINE or IP, got {metric!r}")
        if consistency_level not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency_level must be one of {CONSISTENCY_LEVELS}, got {consistency_level!r}")
        self.consistency_level = consistency_level
        self.bulk_storage, self.bulk_min_rows = bulk_storage, int(bulk_min_rows)
        self._bulk_supported: bool | None = None  # learnt from the server on first use
        self._bulk_fallback_logged = False
        self.dim, self.collection, self.uri = int(dim), collection, uri
        self.token, self.db_name, self.metric, self.index_type = token, db_name, metric, index_type
        default_build, default_search = INDEX_TYPES[index_type]
        self.index_params = {**default_build, **(index_params or {})}
        self.search_params = {**default_search, **(search_params or {})}
        self._lite = open_lite(uri)
        try:
            self.client = connect(uri, token, db_name)
            self._open_collection(create, overwrite)
        except BaseException:
            self.close()
            raise

    def _open_collection(self, create: bool, overwrite: bool) -> None:
        if overwrite and self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        if self.client.has_collection(self.collection):
            self._check_existing()
        elif create:
            self._create()
        else:
            raise IndexNotFoundError(f"Milvus collection {self.collection!r} does not exist at {self.uri!r}")

    def _create(self) -> None:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(KEY_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_KEY_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name=VECTOR_FIELD, index_type=self.index_type, metric_type=self.metric, params=self.index_params
        )
        try:
            self.client.create_collection(
                self.collection, schema=schema, index_params=index, consistency_level=self.consistency_level
            )
            write_point("collection created")
        except MilvusException as exc:
            if self.client.has_collection(self.collection):
                self.client.drop_collection(self.collection)
            if "index type" in str(exc).lower():  # feature detection: the server says what it supports
                raise UnsupportedIndexError(
                    f"this Milvus ({self.uri}) does not support index type {self.index_type}: {exc.message}"
                ) from exc
            raise

    def _check_existing(self) -> None:
        fields = self.client.describe_collection(self.collection)["fields"]
        vector = next((f for f in fields if f["name"] == VECTOR_FIELD), None)
        if vector is None:
            raise IndexMismatchError(
                f"collection {self.collection!r} has no {VECTOR_FIELD!r} field: not a revsearch collection"
            )
        existing = int(vector["params"]["dim"])
        if existing != self.dim:
            raise IndexMismatchError(
                f"collection {self.collection!r} holds {existing}-d vectors, this index produces {self.dim}-d vectors"
            )
        self.client.load_collection(self.collection)

    def _rpc(self, method: str, *args, **kwargs):
        """Call a MilvusClient method; if the channel dropped, retry once on a fresh client."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as exc:
            if not is_dropped_channel(exc):
                raise
            logger.warning(
                "Milvus channel to %s dropped (%s); retrying once on a new connection", self.uri, exc.message
            )
            self.client.close()
            self.client = connect(self.uri, self.token, self.db_name, fresh=True)
            return getattr(self.client, method)(*args, **kwargs)

    def __len__(self) -> int:
        """The entity count (``count(*)``: Milvus counts, no keys are read)."""
        res = self._rpc("query", self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def keys(self) -> list[str]:
        """Every key in the collection (paged, so it works on large collections)."""
        iterator = self.client.query_iterator(self.collection, batch_size=8192, filter="", output_fields=[KEY_FIELD])
        keys: list[str] = []
        while page := iterator.next():
            keys.extend(from_milvus_key(row[KEY_FIELD]) for row in page)
        iterator.close()
        return keys

    @property
    def supports_bulk_import(self) -> bool:
        """Whether this Milvus offers server-side bulk import: asked once, answered by the server."""
        if self._bulk_supported is None:
            with self._import_connection() as using:
                self._bulk_supported = supports_bulk_import(using, self.collection)
        return self._bulk_supported

    def _import_connection(self):
        """A connection alias for pymilvus's bulk-insert calls (a Lite file: the path the client serves)."""
        return import_connection(self.uri, self.token, self.db_name)

    def _check_vectors(self, keys: list[str], vectors: np.ndarray) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors have dimension {arr.shape[-1]}, the index expects {self.dim}")
        if len(arr) != len(keys):
            raise IndexMismatchError(f"{len(keys)} keys but {len(arr)} vectors")
        return arr

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Upsert (re-runs never duplicate); :meth:`bulk_add` from ``bulk_min_rows`` rows with ``bulk_storage``
        where the server offers bulk import."""
        arr = self._check_vectors(keys, vectors)
        if self.bulk_storage is not None and len(keys) >= self.bulk_min_rows:
            if self.supports_bulk_import:
                self.bulk_add(keys, arr)
                return
            if not self._bulk_fallback_logged:
                self._bulk_fallback_logged = True
                logger.warning("Milvus at %s has no bulk import (UNIMPLEMENTED): adding by upsert instead", self.uri)
        for start in range(0, len(keys), INSERT_BATCH):
            rows = [
                {KEY_FIELD: to_milvus_key(k), VECTOR_FIELD: v.tolist()}
                for k, v in zip(keys[start : start + INSERT_BATCH], arr[start : start + INSERT_BATCH])
            ]
            self._rpc("upsert", self.collection, rows, timeout=WRITE_TIMEOUT_S)
            write_point("vectors upserted")

    def bulk_add(
        self,
        keys: list[str],
        vectors: np.ndarray,
        storage: BulkStorage | None = None,
        rows_per_file: int = ROWS_PER_FILE,
        timeout: float = IMPORT_TIMEOUT,
    ) -> None:
        """Upsert by server-side bulk import through ``storage`` (default: ``bulk_storage``), one task per
        ``rows_per_file`` rows, ``timeout`` s each. :class:`BulkImportUnsupportedError` where the server
        has none; :class:`BulkImportError` if a task fails (its keys may then be missing: add them again)."""
        storage = storage or self.bulk_storage
        if storage is None:
            raise ValueError("bulk_add needs a BulkStorage: pass storage= or set bulk_storage")
        arr = self._check_vectors(keys, vectors)
        if not self.supports_bulk_import:
            raise BulkImportUnsupportedError(
                f"Milvus at {self.uri} does not offer bulk import (it answered UNIMPLEMENTED); use add()"
            )
        last = {to_milvus_key(k): i for i, k in enumerate(keys)}  # a repeated key: its last vector wins
        stored, rows = list(last), np.fromiter(last.values(), dtype=np.int64, count=len(last))

        def delete_existing(chunk: list[str]) -> None:  # import inserts: never leave a second row per key
            for start in range(0, len(chunk), INSERT_BATCH):
                self.client.delete(self.collection, ids=chunk[start : start + INSERT_BATCH], timeout=WRITE_TIMEOUT_S)

        with self._import_connection() as using:
            bulk_import(
                self.client,
                using,
                self.collection,
                storage,
                KEY_FIELD,
                VECTOR_FIELD,
                stored,
                arr[rows],
                before_import=delete_existing,
                rows_per_file=rows_per_file,
                timeout=timeout,
            )

    def remove(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), INSERT_BATCH):
            ids = [to_milvus_key(k) for k in keys[start : start + INSERT_BATCH]]
            self._rpc("delete", self.collection, ids=ids, timeout=WRITE_TIMEOUT_S)
            write_point("vectors deleted")

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"query has dimension {q.shape[1]}, the index expects {self.dim}")
        return q

    def _search(self, q: np.ndarray, limit: int, expr: str = "", params: dict | None = None) -> list[list[Hit]]:
        """One Milvus search per ``QUERY_BATCH`` queries."""
        results: list[list[Hit]] = []
        for start in range(0, len(q), QUERY_BATCH):
            res = self._rpc(
                "search",
                self.collection,
                data=q[start : start + QUERY_BATCH].tolist(),
                limit=limit,
                filter=expr,
                anns_field=VECTOR_FIELD,
                consistency_level=self.consistency_level,
                search_params={"metric_type": self.metric, "params": params or self.search_params},
            )
            results.extend([Hit(from_milvus_key(str(h["id"])), float(h["distance"])) for h in hits] for hits in res)
        return results

    def search(
        self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None, reverse: bool = False
    ) -> list[list[Hit]]:
        """The ``k`` nearest vectors, among the ``allowed`` keys when given (exact on a FLAT index)."""
        if reverse:
            raise ValueError(
                "Milvus searches for nearest neighbours only (no farthest-first search): "
                "use an exact or kmeans index for least-similar queries"
            )
        q = self._check_queries(queries)
        if allowed is None:
            return self._search(q, k)
        allowed = list(allowed)
        results: list[list[Hit] | None] = [None] * len(q)
        if len(allowed) > FILTER_CHUNK_KEYS and len(allowed) >= DENSE_VIEW_FRACTION * (total := len(self)):
            wanted = set(allowed)
            limit = min(MAX_LIMIT, k * math.ceil(2 * total / max(len(allowed), 1)))
            for i, hits in enumerate(self._search(q, limit)):
                kept = [h for h in hits if h.key in wanted][:k]
                if len(kept) == min(k, len(allowed)) or len(hits) < limit:
                    results[i] = kept
        short = [i for i, r in enumerate(results) if r is None]
        for i, hits in zip(short, self._filtered(q[short], k, allowed, self.search_params)):
            results[i] = hits[:k]
        return results

    def _filtered(self, q: np.ndarray, limit: int, allowed: list[str], params: dict) -> list[list[Hit]]:
        """Search with ``key in [...]`` filters of ``FILTER_CHUNK_KEYS`` keys; hits merged, nearest first."""
        if not len(q):
            return []
        return _over_key_chunks(len(q), allowed, lambda expr: self._search(q, limit, expr, params))

    def nearest_pages(self, query: np.ndarray, allowed: Collection[str] | None = None) -> Iterator[list[Hit]]:
        """The vectors nearest to one query (among ``allowed``), page after page, nearest first: for a
        search that needs more than ``MAX_LIMIT`` hits. Each page is a range search from the farthest
        distance the pages before covered in full (L2); no hit is given twice."""
        if self.metric != "L2":
            raise ValueError(f"nearest_pages needs metric L2; this collection uses {self.metric}")
        q = self._check_queries(query)[:1]
        chunks = [""] if allowed is None else [key_filter(c) for c in _key_chunks(list(allowed))]
        params, seen = dict(self.search_params), set()
        while True:
            parts = [self._search(q, MAX_LIMIT, expr, params)[0] for expr in chunks]
            # a full part may hold more beyond its farthest hit: the page is complete up to the nearest such
            covered = min((part[-1].distance for part in parts if len(part) == MAX_LIMIT), default=math.inf)
            page = sorted(
                (h for part in parts for h in part if h.distance <= covered and h.key not in seen),
                key=lambda h: h.distance,
            )
            if page:
                seen.update(h.key for h in page)
                yield page
            if covered == math.inf:
                return
            if not page:
                raise ValueError(f"more than {MAX_LIMIT} vectors lie at the same distance {covered} of the query")
            params = {**self.search_params, "radius": float(np.finfo(np.float32).max), "range_filter": covered}

    def range_search(
        self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
    ) -> list[list[Hit]]:
        """Every vector (among ``allowed``) within squared L2 distance ``radius``, nearest first.

        Milvus range search: ``range_filter <= distance < radius`` for L2, so the radius passed is
        the next float up (``<= radius`` as in the other indexes). At most ``MAX_LIMIT`` hits per query.
        """
        if self.metric != "L2":
            raise ValueError(f"range_search needs metric L2; this collection uses {self.metric}")
        q = self._check_queries(queries)
        params = {
            **self.search_params,
            "radius": float(np.nextafter(np.float32(radius), np.float32(np.inf))),
            "range_filter": 0.0,
        }
        if allowed is None:
            return self._range(q, radius, params, "")
        return _over_key_chunks(len(q), list(allowed), lambda expr: self._range(q, radius, params, expr))

    def _range(self, q: np.ndarray, radius: float, params: dict, expr: str) -> list[list[Hit]]:
        """Range search with a small limit first; queries that fill it are searched again with a
        larger one (a limit of 16,384 costs ~5x the time of 64 when few vectors are in range)."""
        limit = RANGE_FIRST_LIMIT
        results = self._search(q, limit, expr, params)
        while full := [i for i, hits in enumerate(results) if len(hits) >= limit]:
            if limit >= MAX_LIMIT:
                raise ValueError(
                    f"more than {MAX_LIMIT} vectors lie within distance {radius} of a query, the "
                    "most Milvus returns: use a smaller threshold, or a kmeans index"
                )
            limit = min(MAX_LIMIT, limit * 16)
            for i, hits in zip(full, self._search(q[full], limit, expr, params)):
                results[i] = hits
        return [[h for h in hits if h.distance <= radius] for hits in results]

    def _rows(self, keys: list[str], fields: list[str]) -> Iterable[dict]:
        """The stored rows of ``keys`` (those present), with ``fields``."""
        for start in range(0, len(keys), INSERT_BATCH):
            ids = [to_milvus_key(k) for k in keys[start : start + INSERT_BATCH]]
            yield from self._rpc("query", self.collection, ids=ids, output_fields=fields)

    def contains(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` that are stored (without reading the other keys)."""
        return {from_milvus_key(row[KEY_FIELD]) for row in self._rows(keys, [KEY_FIELD])}

    def vectors(self, keys: list[str]) -> np.ndarray:
        """Stored vectors for ``keys``, in that order; raises KeyError naming a missing key."""
        rows = self._rows(keys, [KEY_FIELD, VECTOR_FIELD])
        by_key = {from_milvus_key(row[KEY_FIELD]): row[VECTOR_FIELD] for row in rows}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise KeyError(f"{len(missing)} keys not in collection {self.collection!r}, e.g. {missing[0]!r}")
        return np.asarray([by_key[k] for k in keys], dtype=np.float32).reshape(len(keys), self.dim)

    def drop(self) -> None:
        self.client.drop_collection(self.collection)

    def close(self) -> None:
        """Close the connection; for Milvus Lite also stop its server and release the file's lock."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
            self.client = None
        if self._lite:
            self._lite.release()
            self._lite = None

    def config(self) -> dict:
        names = ("dim", "collection", "uri", "db_name", *_SETTINGS)
        return {"kind": self.kind, **{name: getattr(self, name) for name in names}}

    def save(self, directory: Path) -> None:
        """Nothing to write: the vectors live in Milvus (the config goes in the manifest)."""

    @classmethod
    def load(cls, directory: Path | None, config: dict, token: str = "") -> MilvusIndex:
        """Reconnect to the existing collection ``config`` names (a missing Lite file is an error, not
        created empty); settings it lacks take their defaults."""
        where = f"the index in {directory}" if directory else f"collection {config['collection']!r}"
        if is_lite_uri(config["uri"]) and not Path(config["uri"]).expanduser().exists():
            raise IndexNotFoundError(
                f"Milvus Lite file {config['uri']!r} does not exist: {where} "
                "lost its vectors; rebuild it with revsearch index FOLDER --rebuild"
            )
        uri = config["uri"]
        if is_lite_uri(uri) and not os.access(Path(uri).expanduser().parent, os.W_OK):
            uri = _read_only_copy(uri)
        settings = {k: config[k] for k in _SETTINGS if config.get(k) is not None}
        return cls(
            config["dim"], config["collection"], uri, token, config.get("db_name") or "", create=False, **settings
        )


def drop_collection(uri: str, collection: str, token: str = "", db_name: str = "") -> None:
    """Drop ``collection`` at ``uri`` if it exists (a missing Lite file holds nothing to drop)."""
    if is_lite_uri(uri) and not Path(uri).expanduser().exists():
        return
    lite = open_lite(uri)
    try:
        client = connect(uri, token, db_name)
        try:
            if client.has_collection(collection):
                client.drop_collection(collection)
        finally:
            client.close()
    finally:
        if lite:
            lite.release()


def _read_only_copy(uri: str) -> str:
    """A private copy, deleted at exit, of a Lite file in a read-only folder (milvus-lite writes lock files
    next to the file it serves)."""
    folder = tempfile.mkdtemp(prefix="revsearch-readonly-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = str(Path(folder) / Path(uri).name)
    shutil.copyfile(Path(uri).expanduser(), copy)
    logger.info("%s is in a read-only folder: serving queries from a private copy", uri)
    return copy
