"""A Milvus Lite index used through the process that serves its file: no pymilvus in the caller.

Importing pymilvus (and the pandas it needs) takes about a second, most of a short CLI query. The
serving process (:mod:`revsearch.lite_server`) has it loaded and its collections open, so in shared
mode a process that re-opens a Lite index sends each index call there (a local socket,
``multiprocessing.connection`` with a random key from the owner-only serve file) and the serving
process runs it on the same :class:`~revsearch.milvus_index.MilvusIndex` as always.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Collection
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

import numpy as np

from .errors import RevsearchError
from .hits import Hit

#: The index calls a client may send.
METHODS = frozenset(
    {"open", "__len__", "keys", "contains", "vectors", "add", "remove", "search", "range_search", "drop"}
)


class ServedIndex:
    """The Milvus index ``config`` describes, on a Lite file served by another process (``start``: the
    :class:`~revsearch.lite_server.LiteServerStart` that opens it). Opening it checks the collection
    as :meth:`MilvusIndex.load` does, with the same errors."""

    kind = "milvus"
    supports_least_similarity = False

    def __init__(self, config: dict, start):
        self._config, self._start = dict(config), start
        self.uri, self.collection, self.db_name = config["uri"], config["collection"], config.get("db_name") or ""
        self._conn: Connection | None = None
        try:
            self._call("open")
        except BaseException:
            self.close()
            raise

    @property
    def dim(self) -> int:
        return int(self._config["dim"])

    def _connect(self) -> Connection:
        if self._conn is None:
            slot = self._start.slot()
            self._conn = Client(slot.queries, "AF_UNIX", authkey=bytes.fromhex(slot.authkey))
        return self._conn

    def _call(self, method: str, *args):
        for retry in (False, True):
            try:
                conn = self._connect()
                conn.send((self._config, method, args))
                status, value = conn.recv()
                break
            except (EOFError, OSError):  # the serving process stopped (killed): serve the file again, once
                if retry:
                    raise
                self._disconnect()
                self._start = self._start.again()
        if status == "error":
            raise value
        return value

    def __len__(self) -> int:
        return self._call("__len__")

    def keys(self) -> list[str]:
        return self._call("keys")

    def contains(self, keys: Collection[str]) -> set[str]:
        return self._call("contains", list(keys))

    def vectors(self, keys: list[str]) -> np.ndarray:
        return self._call("vectors", list(keys))

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self._call("add", list(keys), np.asarray(vectors))

    def remove(self, keys) -> None:
        self._call("remove", list(keys))

    def search(
        self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None, reverse: bool = False
    ) -> list[list[Hit]]:
        return self._call("search", np.asarray(queries), k, None if allowed is None else list(allowed), reverse)

    def range_search(
        self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
    ) -> list[list[Hit]]:
        return self._call("range_search", np.asarray(queries), radius, None if allowed is None else list(allowed))

    def drop(self) -> None:
        self._call("drop")

    def config(self) -> dict:
        return dict(self._config)

    def save(self, directory: Path) -> None:
        """Nothing to write: the vectors live in Milvus (the config goes in the manifest)."""

    def direct(self):
        """The same index through pymilvus in this process (a :class:`MilvusIndex` on the served file)."""
        from .milvus_index import MilvusIndex

        self.close()
        return MilvusIndex.load(None, self._config)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._disconnect()
        self._start.release()


class IndexService:
    """In the serving process: answers :class:`ServedIndex` calls on ``milvus_uri`` (its Lite server)."""

    def __init__(self, milvus_uri: str):
        self.milvus_uri = milvus_uri
        self.folder = tempfile.mkdtemp(prefix="revsearch-lite-")  # owner-only
        self.address = os.path.join(self.folder, "index.sock")
        self.authkey = os.urandom(32)
        self._listener = Listener(self.address, "AF_UNIX", authkey=self.authkey)
        self._indexes: dict[str, tuple[threading.Lock, object]] = {}
        self._mutex = threading.Lock()
        threading.Thread(target=self._accept, name="revsearch-index-service", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:  # closed
                return
            except Exception:  # a client that failed the key check
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    config, method, args = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    reply = ("ok", self._run(config, method, args))
                except Exception as exc:
                    reply = ("error", exc)
                try:
                    conn.send(reply)
                except (EOFError, OSError):
                    return
                except Exception:  # an error that does not pickle
                    conn.send(("error", RevsearchError(f"{type(reply[1]).__name__}: {reply[1]}")))

    def _run(self, config: dict, method: str, args: tuple):
        if method not in METHODS:
            raise ValueError(f"not an index call: {method!r}")
        key = repr(sorted(config.items()))
        lock, index = self._open(key, config)
        if method == "open":
            return None
        with lock:
            try:
                return getattr(index, method)(*args)
            except Exception:
                self._forget(key)  # e.g. its collection was dropped: open it afresh next time
                raise
            finally:
                if method == "drop":
                    self._forget(key)

    def _open(self, key: str, config: dict):
        from .milvus_index import MilvusIndex

        with self._mutex:
            if key not in self._indexes:
                self._indexes[key] = (threading.Lock(), MilvusIndex.load(None, config, via=self.milvus_uri))
            return self._indexes[key]

    def _forget(self, key: str) -> None:
        with self._mutex:
            _, index = self._indexes.pop(key, (None, None))
        if index is not None:
            index.close()

    def close(self) -> None:
        self._listener.close()
        with self._mutex:
            indexes, self._indexes = self._indexes, {}
        for _, index in indexes.values():
            index.close()
        Path(self.address).unlink(missing_ok=True)
        os.rmdir(self.folder)
