"""The vector index behind a brain run, opened when first needed (see :mod:`revsearch.index.registry`).

In-memory kinds (exact, kmeans) are stored with the run (:mod:`revsearch.fiftyone.run_store`); a Milvus
index keeps its vectors in a collection. A Lite file serves one process at a time: a Lite index keeps the
file (and its server) until another process asks for it (:mod:`revsearch.index.lite_lock`), so the App
and a notebook take turns without restarting the server before every search.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from revsearch.errors import IndexMismatchError, IndexNotFoundError, RevsearchError
from revsearch.index.hits import Hit
from revsearch.index.lite_lock import hand_over_on_request
from revsearch.index.milvus_uri import is_lite_uri
from revsearch.index.protocol import VectorIndex
from revsearch.index.registry import MILVUS_OPTIONS, check_kind, create_index, load_index

#: How long an operation waits for a Milvus Lite file held by another process.
LITE_WAIT_S = 30.0


class IndexHandle:
    """A brain run's :class:`~revsearch.index.protocol.VectorIndex`, made on the first add.

    ``state``: the run's stored index state (``kind`` plus, for in-memory kinds, keys and vectors;
    for milvus, ``dim``); ``options``: how to make it (``n_clusters`` / ``nprobe``; Milvus
    connection: ``collection``, ``uri``, ``db_name``, ``index_type``, ``token``; ``overwrite``: a collection
    of that name is dropped when the index is made).
    """

    def __init__(self, state: dict, options: dict):
        self.kind = check_kind(state["kind"])
        self.dim: int | None = state.get("dim")
        self.options = {k: v for k, v in options.items() if v is not None}
        self.is_lite = self.kind == "milvus" and is_lite_uri(self.options["uri"])
        self._index: VectorIndex | None = None
        if self.kind != "milvus" and "vectors" in state:
            self._index = load_index({**state, "kind": self.kind})
        self._mutex = threading.RLock()
        if self.is_lite:
            hand_over_on_request(Path(self.options["uri"]).expanduser().resolve(), self.release)

    def _create(self, sample: np.ndarray) -> VectorIndex:
        if self.kind != "milvus":
            return create_index(
                self.kind, sample, n_clusters=self.options.get("n_clusters"), nprobe=self.options.get("nprobe")
            )
        milvus = {k: v for k, v in self.options.items() if k in MILVUS_OPTIONS}
        overwrite = bool(self.options.get("overwrite"))
        return self._retry_lite(lambda: create_index("milvus", sample, overwrite=overwrite, **milvus))

    def _reopen(self) -> VectorIndex:
        milvus = {k: v for k, v in self.options.items() if k in MILVUS_OPTIONS and k != "token"}
        config = {"kind": "milvus", "dim": self.dim, **milvus}
        return self._retry_lite(lambda: load_index(config, token=self.options.get("token", "")))

    def _retry_lite(self, open_index) -> VectorIndex:
        """``open_index()``, retried for up to ``LITE_WAIT_S`` while another process holds the Lite file."""
        deadline = time.monotonic() + LITE_WAIT_S
        while True:
            try:
                return open_index()
            except (IndexNotFoundError, IndexMismatchError):
                raise
            except RevsearchError:
                if not self.is_lite or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @contextlib.contextmanager
    def session(self, sample: np.ndarray | None = None) -> Iterator[VectorIndex | None]:
        """The open index, or None if nothing was ever added (and no ``sample`` to make it from).

        The index stays open between operations (no restart of the Lite server); a Lite file is
        released between operations when another process asks for it.
        """
        with self._mutex:
            if self._index is None:
                if sample is not None:
                    self._index = self._create(sample)
                    self.dim = self._index.dim
                elif self.kind == "milvus" and self.dim is not None:
                    self._index = self._reopen()
                else:
                    yield None
                    return
            yield self._index

    # ---- the index's operations (an index never added to is empty) ----------------------------
    def __len__(self) -> int:
        with self.session() as index:
            return len(index) if index is not None else 0

    def keys(self) -> list[str]:
        with self.session() as index:
            return index.keys() if index is not None else []

    def contains(self, keys: list[str]) -> set[str]:
        with self.session() as index:
            return index.contains(keys) if index is not None else set()

    def vectors(self, keys: list[str]) -> np.ndarray:
        """Stored vectors for ``keys``, in that order; KeyError if one is not stored."""
        with self.session() as index:
            if index is None:
                raise KeyError(keys[0] if keys else "")
            return index.vectors(list(keys))

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        with self.session(sample=vectors) as index:
            index.add(keys, vectors)

    def remove(self, keys: list[str]) -> None:
        with self.session() as index:
            if index is not None:
                index.remove(keys)

    def search(
        self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None, reverse: bool = False
    ) -> list[list[Hit]]:
        with self.session() as index:
            if index is None:
                return [[] for _ in range(len(queries))]
            return index.search(queries, k, allowed=allowed, reverse=reverse)

    def range_search(
        self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
    ) -> list[list[Hit]]:
        with self.session() as index:
            if index is None:
                return [[] for _ in range(len(queries))]
            return index.range_search(queries, radius, allowed=allowed)

    #: Keep the index open across several operations (one Lite start instead of many).
    hold = session

    def release(self) -> None:
        """Close a Milvus index now (for Lite: stop the server, unlock the file)."""
        with self._mutex:
            if self._index is not None and self.kind == "milvus":
                self._index.close()
                self._index = None

    def drop(self) -> None:
        """Delete the vectors (the Milvus collection) for good."""
        with self.session() as index:
            if index is not None:
                index.drop()
        self.release()
        self._index, self.dim = None, None

    def arrays_state(self) -> dict:
        """What the brain run stores: the in-memory index whole (arrays as they are), or a Milvus
        collection's dimension."""
        if self.kind != "milvus" and self._index is not None:
            return self._index.arrays_state()
        return {"kind": self.kind, "dim": self.dim}
