"""Vector stores behind the FiftyOne brain backend: in-memory (K-means IVF, pixel) and Milvus.

In-memory stores are serialised into the brain run's results (FiftyOne's database). The Milvus
store keeps its vectors in a collection; a Milvus Lite file can be open in only one process at a
time, so a Lite store keeps its file (and running server) until another process asks for it (see
:mod:`revsearch.lite_lock`), which lets the App server and a notebook use the same index in turn.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
from eta.core.serial import deserialize_numpy_array, serialize_numpy_array

from .errors import IndexMismatchError, IndexNotFoundError, RevsearchError
from .exact_index import ExactIndex
from .hits import Hit
from .ivf_index import IVFIndex
from .lite_lock import hand_over_on_request
from .milvus_index import MilvusIndex, is_lite_uri

#: How long an operation waits for a Milvus Lite file held by another process.
LITE_WAIT_S = 30.0


class MemoryStore:
    """An :class:`ExactIndex` (``pixel``) or :class:`IVFIndex` (``kmeans``) kept in memory."""

    def __init__(self, kind: str, index: ExactIndex | IVFIndex | None = None,
                 n_clusters: int | None = None, nprobe: int | None = None):
        self.kind, self.index = kind, index
        self.n_clusters, self.nprobe = n_clusters, nprobe

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else 0

    def keys(self) -> list[str]:
        return self.index.keys() if self.index is not None else []

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if self.index is None:
            if self.kind == "kmeans":
                n_clusters = min(self.n_clusters or 0, len(vectors)) or None
                self.index = IVFIndex.fit(vectors, n_clusters, self.nprobe)
            else:
                self.index = ExactIndex(vectors.shape[1], np.float64)
        self.index.add(keys, vectors)

    def remove(self, keys: list[str]) -> None:
        if self.index is not None:
            self.index.remove(keys)

    def vectors(self, keys: list[str]) -> np.ndarray:
        """Stored vectors for ``keys``, in that order; KeyError if one is not stored."""
        if self.index is None:
            raise KeyError(keys[0] if keys else "")
        store = self.index.store
        return store.vectors[store.rows_of(keys)]

    def contains(self, keys: list[str]) -> set[str]:
        store = self.index.store if self.index is not None else None
        return {k for k in keys if store is not None and k in store}

    def search(self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None,
               reverse: bool = False) -> list[list[Hit]]:
        if self.index is None or not len(self.index):
            return [[] for _ in range(len(queries))]
        return self.index.search(queries, k, allowed=allowed, reverse=reverse)

    def range_search(self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
                     ) -> list[list[Hit]]:
        if self.index is None or not len(self.index):
            return [[] for _ in range(len(queries))]
        return self.index.range_search(queries, radius, allowed=allowed)

    def drop(self) -> None:
        self.index = None

    def hold(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def state(self) -> dict:
        """JSON-able state (vectors as compressed base64 ``.npy``)."""
        if self.index is None:
            return {"kind": self.kind}
        state: dict = {"kind": self.kind}
        if isinstance(self.index, IVFIndex):  # lists first: it orders the rows by cluster
            lists = self.index.lists_state()
            state.update(centroids=serialize_numpy_array(self.index.centroids), nprobe=self.index.nprobe,
                         lists={name: serialize_numpy_array(a) for name, a in lists.items()})
        # keys in row order, as the vectors (IVF keys() are in insertion order, rows in list order)
        state.update(keys=list(self.index.store.keys), vectors=serialize_numpy_array(self.index.store.vectors))
        return state

    @classmethod
    def from_state(cls, state: dict, n_clusters: int | None, nprobe: int | None) -> "MemoryStore":
        store = cls(state["kind"], None, n_clusters, nprobe)
        if "vectors" not in state:
            return store
        vectors = deserialize_numpy_array(state["vectors"])
        if "lists" in state:  # stored in list order with each row's cluster: nothing to re-assign
            lists = {name: deserialize_numpy_array(a) for name, a in state["lists"].items()}
            store.index = IVFIndex.from_lists(deserialize_numpy_array(state["centroids"]), state["nprobe"],
                                              state["keys"], vectors, lists)
            return store
        if "centroids" in state:
            store.index = IVFIndex(deserialize_numpy_array(state["centroids"]), state["nprobe"])
        else:
            store.index = ExactIndex(vectors.shape[1], vectors.dtype)
        if state["keys"]:
            store.index.add(state["keys"], vectors)
        return store


class MilvusStore:
    """A Milvus collection: a Lite file is released when another process asks for it, a server
    connection stays open."""

    def __init__(self, collection: str, uri: str, token: str = "", db_name: str = "",
                 index_type: str = "FLAT", dim: int | None = None):
        self.collection, self.uri, self.token = collection, uri, token
        self.db_name, self.index_type, self.dim = db_name, index_type, dim
        self.is_lite = is_lite_uri(uri)
        self._open_index: MilvusIndex | None = None
        self._mutex = threading.RLock()
        if self.is_lite:
            hand_over_on_request(Path(uri).expanduser().resolve(), self.release)

    def _open(self, create: bool) -> MilvusIndex:
        deadline = time.monotonic() + LITE_WAIT_S
        while True:
            try:
                return MilvusIndex(self.dim, self.collection, self.uri, self.token, self.db_name,
                                   index_type=self.index_type, create=create)
            except (IndexNotFoundError, IndexMismatchError):
                raise
            except RevsearchError:
                if not self.is_lite or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # another process holds the Lite file

    @contextlib.contextmanager
    def session(self, create: bool = False) -> Iterator[MilvusIndex | None]:
        """The open collection, or None if nothing was ever added (and ``create`` is False).

        The collection stays open between operations (no restart of the Lite server); a Lite
        file is released between operations when another process asks for it.
        """
        with self._mutex:
            if self._open_index is None:
                if self.dim is None:
                    yield None
                    return
                self._open_index = self._open(create)
            yield self._open_index

    def release(self) -> None:
        """Close the collection now (for Lite: stop the server, unlock the file)."""
        with self._mutex:
            if self._open_index is not None:
                self._open_index.close()
                self._open_index = None

    def hold(self) -> contextlib.AbstractContextManager:
        """Keep the collection open across several operations (one Lite start instead of many)."""
        return self.session()

    def __len__(self) -> int:
        with self.session() as index:
            return len(index) if index is not None else 0

    def keys(self) -> list[str]:
        with self.session() as index:
            return index.keys() if index is not None else []

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self.dim = self.dim or int(vectors.shape[1])
        with self.session(create=True) as index:
            index.add(keys, vectors)

    def remove(self, keys: list[str]) -> None:
        with self.session() as index:
            if index is not None:
                index.remove(keys)

    def vectors(self, keys: list[str]) -> np.ndarray:
        """Stored vectors for ``keys``, in that order (every key must be present)."""
        with self.session() as index:
            return index.get_vectors(list(keys))

    def contains(self, keys: list[str]) -> set[str]:
        with self.session() as index:
            return index.contains(keys) if index is not None else set()

    def search(self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None,
               reverse: bool = False) -> list[list[Hit]]:
        with self.session() as index:
            if index is None:
                return [[] for _ in range(len(queries))]
            return index.search(queries, k, allowed=allowed, reverse=reverse)

    def range_search(self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
                     ) -> list[list[Hit]]:
        with self.session() as index:
            if index is None:
                return [[] for _ in range(len(queries))]
            return index.range_search(queries, radius, allowed=allowed)

    def drop(self) -> None:
        with self.session() as index:
            if index is not None:
                index.drop()

    def state(self) -> dict:
        return {"kind": "milvus", "dim": self.dim}
