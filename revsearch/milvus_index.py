"""Vectors in Milvus through pymilvus's ``MilvusClient``: Milvus Lite file or server, same code.

The connection is the only difference between Milvus Lite (``uri="revsearch.db"``, a local file)
and a Milvus server or cluster (``uri="http://host:19530"``, plus ``token`` / ``db_name``).
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from .crashpoints import write_point
from .errors import (BulkImportUnsupportedError, IndexMismatchError, IndexNotFoundError, LiteFileBusyError,
                     RevsearchError, UnsupportedIndexError)
from .hits import Hit
from .milvus_bulk import IMPORT_TIMEOUT, ROWS_PER_FILE, BulkStorage, bulk_import, supports_bulk_import

logger = logging.getLogger(__name__)

DEFAULT_URI = "revsearch.db"
KEY_FIELD, VECTOR_FIELD = "key", "vector"
MAX_KEY_LENGTH = 4096
INSERT_BATCH = 2000
#: ``add`` uses server-side bulk import (when ``bulk_storage`` is set and the server has it) from this
#: many rows up; below it, upserts are as fast or faster (an import task + reload costs ~10 s whatever
#: its size; docs/scale-out.md has the measurements).
BULK_MIN_ROWS = 200_000
QUERY_BATCH = 256
#: Index build and search parameters per Milvus index type.
INDEX_TYPES = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 64}),
    "AUTOINDEX": ({}, {}),
}
#: Milvus read consistency: Strong = every search sees all earlier writes (revsearch's default, needed
#: for "add then query" in one process); Bounded / Session / Eventually trade that for latency on a
#: busy cluster (Milvus Lite behaves as Strong whatever is asked).
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
#: Starting a Lite server is retried this often, this many seconds apart (see :func:`connect`).
LITE_START_ATTEMPTS, LITE_RETRY_WAIT_S = 5, 2.0


#: Keys that are not valid UTF-8 (file names with undecodable bytes) are stored base64-escaped.
_ESCAPED_KEY = "revsearch-b64:"


def to_milvus_key(key: str) -> str:
    """A VARCHAR-safe form of ``key``: unchanged when it is valid UTF-8, base64-escaped otherwise."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return _ESCAPED_KEY + base64.urlsafe_b64encode(key.encode("utf-8", "surrogateescape")).decode("ascii")
    return key


def from_milvus_key(stored: str) -> str:
    """Inverse of :func:`to_milvus_key`."""
    if stored.startswith(_ESCAPED_KEY):
        return base64.urlsafe_b64decode(stored[len(_ESCAPED_KEY):]).decode("utf-8", "surrogateescape")
    return stored


def is_lite_uri(uri: str) -> bool:
    """True for a Milvus Lite file path, False for a server URI."""
    return not uri.startswith(("http://", "https://", "tcp://", "unix:", "grpc://"))


class LiteFileLock:
    """An exclusive, process-wide lock on ``<file>.revsearch.lock`` while a Milvus Lite file is open.

    milvus-lite 2.5 has a lock of its own, but a second process that fails to open the file
    deletes it on exit, letting a third process in; ours makes the one-process rule dependable and
    the error clear. Within one process, indexes on the same file share the lock (reference count),
    and the Lite server is stopped when the last of them closes.
    """

    _held: dict[str, tuple[object, int]] = {}

    def __init__(self, db_path: Path):
        self.db_path = str(db_path)
        self.path = Path(f"{db_path}.revsearch.lock")

    def acquire(self) -> None:
        import fcntl

        if self.db_path in self._held:
            handle, count = self._held[self.db_path]
            self._held[self.db_path] = (handle, count + 1)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LiteFileBusyError(f"Milvus Lite file {self.db_path} is open in {holder}; a Lite file serves "
                                    "one process at a time (close it there, or use a Milvus server for "
                                    "shared access)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self._held[self.db_path] = (handle, 1)

    def release(self) -> None:
        """Drop one reference; the last one stops this process's Lite server and unlocks the file."""
        if self.db_path not in self._held:
            return
        handle, count = self._held.pop(self.db_path)
        if count > 1:
            self._held[self.db_path] = (handle, count - 1)
            return
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(self.db_path)
        handle.close()  # closing the descriptor drops the flock


def check_lite_file_name(name: str) -> None:
    """milvus-lite 2.5 accepts file names of at most 36 characters from [A-Za-z0-9._-]."""
    if len(name) > 36 or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise RevsearchError(f"Milvus Lite file name {name!r} is not accepted by milvus-lite: use at most 36 "
                             "characters from letters, digits, '.', '_' and '-' (the folder may be anything)")


def connect(uri: str = DEFAULT_URI, token: str = "", db_name: str = "") -> MilvusClient:
    """A MilvusClient for a Lite file path or a server URI."""
    if is_lite_uri(uri):
        check_lite_file_name(Path(uri).name)
        Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).expanduser().resolve())
    for _ in range(LITE_START_ATTEMPTS - 1 if is_lite_uri(uri) else 0):
        try:
            return MilvusClient(uri=uri, token=token, db_name=db_name)
        except Exception:
            # the Lite server of a process that was just killed may still hold the file: it stops by
            # itself once it sees its parent gone; start ours afresh and try again
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(uri)
            time.sleep(LITE_RETRY_WAIT_S)
    try:
        return MilvusClient(uri=uri, token=token, db_name=db_name)
    except Exception as exc:
        raise RevsearchError(f"cannot connect to Milvus at {uri!r}: {exc}") from exc


class MilvusIndex:
    """One Milvus collection per index: VARCHAR primary key (path or sample id) + float vector."""

    kind = "milvus"

    def __init__(self, dim: int, collection: str = "revsearch", uri: str = DEFAULT_URI, token: str = "",
                 db_name: str = "", metric: str = "L2", index_type: str = "FLAT",
                 index_params: dict | None = None, search_params: dict | None = None, create: bool = True,
                 overwrite: bool = False, consistency_level: str = "Strong",
                 bulk_storage: BulkStorage | None = None, bulk_min_rows: int = BULK_MIN_ROWS):
        """``bulk_storage``: where bulk-import files go (see :mod:`revsearch.milvus_bulk`); with it,
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
        self._lock = LiteFileLock(Path(uri).expanduser().resolve()) if is_lite_uri(uri) else None
        if self._lock:
            self._lock.acquire()
        try:
            self.client = connect(uri, token, db_name)
            self._open_collection(create, overwrite)
        except BaseException:
            self.close()
            raise

    def _open_collection(self, create: bool, overwrite: bool) -> None:
        collection, uri = self.collection, self.uri
        if overwrite and self.client.has_collection(collection):
            self.client.drop_collection(collection)
        if self.client.has_collection(collection):
            self._check_existing()
        elif create:
            self._create()
        else:
            raise IndexNotFoundError(f"Milvus collection {collection!r} does not exist at {uri!r}")

    def _create(self) -> None:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(KEY_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_KEY_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        index = self.client.prepare_index_params()
        index.add_index(field_name=VECTOR_FIELD, index_type=self.index_type, metric_type=self.metric,
                        params=self.index_params)
        try:
            self.client.create_collection(self.collection, schema=schema, index_params=index,
                                          consistency_level=self.consistency_level)
            write_point("collection created")
        except MilvusException as exc:
            if self.client.has_collection(self.collection):
                self.client.drop_collection(self.collection)
            if "index type" in str(exc).lower():  # feature detection: the server says what it supports
                raise UnsupportedIndexError(f"this Milvus ({self.uri}) does not support index type "
                                            f"{self.index_type}: {exc.message}") from exc
            raise

    def _check_existing(self) -> None:
        fields = self.client.describe_collection(self.collection)["fields"]
        vector = next((f for f in fields if f["name"] == VECTOR_FIELD), None)
        if vector is None:
            raise IndexMismatchError(f"collection {self.collection!r} has no {VECTOR_FIELD!r} field: "
                                     "not a revsearch collection")
        existing = int(vector["params"]["dim"])
        if existing != self.dim:
            raise IndexMismatchError(f"collection {self.collection!r} holds {existing}-d vectors, "
                                     f"this index produces {self.dim}-d vectors")
        self.client.load_collection(self.collection)

    def __len__(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def keys(self) -> list[str]:
        """Every key in the collection (paged, so it works on large collections)."""
        iterator = self.client.query_iterator(self.collection, batch_size=8192, filter="",
                                              output_fields=[KEY_FIELD])
        keys: list[str] = []
        while page := iterator.next():
            keys.extend(from_milvus_key(row[KEY_FIELD]) for row in page)
        iterator.close()
        return keys

    @property
    def supports_bulk_import(self) -> bool:
        """Whether this Milvus offers server-side bulk import: asked once, answered by the server."""
        if self._bulk_supported is None:
            self._bulk_supported = supports_bulk_import(self.client, self.collection)
        return self._bulk_supported

    def _check_vectors(self, keys: list[str], vectors: np.ndarray) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors have dimension {arr.shape[-1]}, the index expects {self.dim}")
        if len(arr) != len(keys):
            raise IndexMismatchError(f"{len(keys)} keys but {len(arr)} vectors")
        return arr

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Upsert: re-adding a key replaces its vector, so re-runs never duplicate.

        With ``bulk_storage`` set and at least ``bulk_min_rows`` rows, this is :meth:`bulk_add` where
        the server offers bulk import; where it does not, upserts (logged once per index).
        """
        arr = self._check_vectors(keys, vectors)
        if self.bulk_storage is not None and len(keys) >= self.bulk_min_rows:
            if self.supports_bulk_import:
                self.bulk_add(keys, arr)
                return
            if not self._bulk_fallback_logged:
                self._bulk_fallback_logged = True
                logger.warning("Milvus at %s has no bulk import (it answered UNIMPLEMENTED): adding by "
                               "upsert in batches of %d instead", self.uri, INSERT_BATCH)
        for start in range(0, len(keys), INSERT_BATCH):
            rows = [{KEY_FIELD: to_milvus_key(k), VECTOR_FIELD: v.tolist()}
                    for k, v in zip(keys[start:start + INSERT_BATCH], arr[start:start + INSERT_BATCH])]
            self.client.upsert(self.collection, rows)
            write_point("vectors upserted")

    def bulk_add(self, keys: list[str], vectors: np.ndarray, storage: BulkStorage | None = None,
                 rows_per_file: int = ROWS_PER_FILE, timeout: float = IMPORT_TIMEOUT) -> None:
        """Add by server-side bulk import through ``storage`` (default: ``bulk_storage``), keeping
        upsert semantics: existing rows with these keys are deleted first, and a key given several
        times keeps its last vector. Raises :class:`BulkImportUnsupportedError` where the server has
        no bulk import, :class:`BulkImportError` (with the server's reason) if an import fails; then
        the keys of the failed task may be missing: add them again. One import task per
        ``rows_per_file`` rows, each given ``timeout`` seconds.
        """
        storage = storage or self.bulk_storage
        if storage is None:
            raise ValueError("bulk_add needs a BulkStorage: pass storage= or set bulk_storage")
        arr = self._check_vectors(keys, vectors)
        if not self.supports_bulk_import:
            raise BulkImportUnsupportedError(f"Milvus at {self.uri} does not offer bulk import "
                                             "(it answered UNIMPLEMENTED); use add()")
        last = {to_milvus_key(k): i for i, k in enumerate(keys)}  # a repeated key: its last vector wins
        stored, rows = list(last), np.fromiter(last.values(), dtype=np.int64, count=len(last))

        def delete_existing(chunk: list[str]) -> None:  # import inserts: never leave a second row per key
            for start in range(0, len(chunk), INSERT_BATCH):
                self.client.delete(self.collection, ids=chunk[start:start + INSERT_BATCH])

        bulk_import(self.client, self.collection, storage, KEY_FIELD, VECTOR_FIELD, stored, arr[rows],
                    before_import=delete_existing, rows_per_file=rows_per_file, timeout=timeout)

    def remove(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), INSERT_BATCH):
            self.client.delete(self.collection, ids=[to_milvus_key(k) for k in keys[start:start + INSERT_BATCH]])
            write_point("vectors deleted")

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"query has dimension {q.shape[1]}, the index expects {self.dim}")
        results: list[list[Hit]] = []
        for start in range(0, len(q), QUERY_BATCH):
            res = self.client.search(self.collection, data=q[start:start + QUERY_BATCH].tolist(), limit=k,
                                     anns_field=VECTOR_FIELD,
                                     search_params={"metric_type": self.metric, "params": self.search_params},
                                     consistency_level=self.consistency_level)
            results.extend([Hit(from_milvus_key(str(h["id"])), float(h["distance"])) for h in hits] for hits in res)
        return results

    def get_vectors(self, keys: list[str]) -> np.ndarray:
        """Stored vectors for ``keys``, in that order; raises KeyError naming a missing key."""
        by_key: dict[str, list[float]] = {}
        for start in range(0, len(keys), INSERT_BATCH):
            rows = self.client.query(self.collection, ids=[to_milvus_key(k) for k in keys[start:start + INSERT_BATCH]],
                                     output_fields=[KEY_FIELD, VECTOR_FIELD])
            by_key.update((from_milvus_key(row[KEY_FIELD]), row[VECTOR_FIELD]) for row in rows)
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise KeyError(f"{len(missing)} keys not in collection {self.collection!r}, e.g. {missing[0]!r}")
        return np.asarray([by_key[k] for k in keys], dtype=np.float32).reshape(len(keys), self.dim)

    def drop(self) -> None:
        self.client.drop_collection(self.collection)

    def close(self) -> None:
        """Close the connection; for Milvus Lite also stop this process's server for the file and
        release the lock, so another process can open it."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
            self.client = None
        if self._lock:
            self._lock.release()
            self._lock = None

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "collection": self.collection, "uri": self.uri,
                "db_name": self.db_name, "metric": self.metric, "index_type": self.index_type,
                "index_params": self.index_params, "search_params": self.search_params,
                "consistency_level": self.consistency_level}

    def save(self, directory: Path) -> None:
        """Nothing to write: the vectors live in Milvus (the config goes in the manifest)."""

    @classmethod
    def load(cls, directory: Path, config: dict, token: str = "") -> "MilvusIndex":
        """Reconnect to an existing collection (a missing Lite file is an error, not created empty)."""
        if is_lite_uri(config["uri"]) and not Path(config["uri"]).expanduser().exists():
            raise IndexNotFoundError(f"Milvus Lite file {config['uri']!r} does not exist: the index in {directory} "
                                     "lost its vectors; rebuild it with revsearch index FOLDER --rebuild")
        uri = config["uri"]
        if is_lite_uri(uri) and not os.access(Path(uri).expanduser().parent, os.W_OK):
            uri = _read_only_copy(uri)
        return cls(config["dim"], config["collection"], uri, token, config.get("db_name", ""),
                   config["metric"], config["index_type"], config["index_params"], config["search_params"],
                   create=False, consistency_level=config.get("consistency_level", "Strong"))


def drop_collection(uri: str, collection: str, token: str = "", db_name: str = "") -> None:
    """Drop ``collection`` at ``uri`` if it exists (a missing Lite file holds nothing to drop)."""
    if is_lite_uri(uri) and not Path(uri).expanduser().exists():
        return
    lock = LiteFileLock(Path(uri).expanduser().resolve()) if is_lite_uri(uri) else None
    if lock:
        lock.acquire()
    try:
        client = connect(uri, token, db_name)
        try:
            if client.has_collection(collection):
                client.drop_collection(collection)
        finally:
            client.close()
    finally:
        if lock:
            lock.release()


def _read_only_copy(uri: str) -> str:
    """A private copy of a Lite file in a read-only folder (milvus-lite must write lock files next to
    the file it serves): queries answer from the copy, which is deleted when the process exits."""
    folder = tempfile.mkdtemp(prefix="revsearch-readonly-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = str(Path(folder) / Path(uri).name)
    shutil.copyfile(Path(uri).expanduser(), copy)
    logger.info("%s is in a read-only folder: serving queries from a private copy", uri)
    return copy
