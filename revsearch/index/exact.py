"""Exact (brute-force) squared-L2 search over vectors held in memory."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from revsearch.array_codec import decode_array
from revsearch.index.hits import Hit, squared_l2, top_k
from revsearch.index.protocol import InMemoryIndex
from revsearch.index.store import VectorStore

#: Distance-matrix cells computed at once (bounds memory for large query batches).
_CHUNK_CELLS = 32_000_000


class ExactIndex(InMemoryIndex):
    """Every query is compared with every vector in one vectorised pass.

    ``dtype=float64`` makes distances on integer data (pixel thumbnails) exact, so results equal
    a naive per-pair loop, ties included.
    """

    kind = "exact"

    def __init__(self, dim: int, dtype: np.dtype | type = np.float32):
        self.store = VectorStore(dim, dtype)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self.store.add(keys, vectors)

    def remove(self, keys: list[str]) -> None:
        self.store.remove(keys)

    def _select(self, queries: np.ndarray, allowed: Collection[str] | None, pick) -> list[list[Hit]]:
        """Per query, the hits at the positions ``pick(distances)`` returns (queries in chunks: bounded memory)."""
        q, keys = self.store.check_dim(queries), self.store.keys
        rows, vectors, norms = None, self.store.vectors, self.store.sq_norms
        if allowed is not None:
            rows = self.store.rows_in(allowed)
            vectors, norms = vectors[rows], norms[rows]
        step = max(1, _CHUNK_CELLS // max(len(vectors), 1))
        return [
            [Hit(keys[i if rows is None else rows[i]], float(row[i])) for i in pick(row)]
            for start in range(0, q.shape[0], step)
            for row in squared_l2(q[start : start + step], vectors, norms)
        ]

    def search(
        self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None, reverse: bool = False
    ) -> list[list[Hit]]:
        """The ``k`` nearest (``reverse``: farthest) stored vectors among the ``allowed`` keys (None: all)."""
        return self._select(queries, allowed, lambda row: top_k(-row if reverse else row, k))

    def range_search(
        self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
    ) -> list[list[Hit]]:
        """Every stored vector (among ``allowed``) within squared distance ``radius``, nearest first."""
        return self._select(
            queries, allowed, lambda row: (i := np.flatnonzero(row <= radius))[np.argsort(row[i], kind="stable")]
        )

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "dtype": self.store.dtype.name}

    def save(self, directory: Path) -> None:
        self.store.save(directory, "vectors")

    @classmethod
    def load(cls, directory: Path, config: dict) -> ExactIndex:
        index = cls(config["dim"], config["dtype"])
        index.store = VectorStore.load(directory, "vectors")
        return index

    @classmethod
    def from_state(cls, state: dict) -> ExactIndex:
        """Inverse of :meth:`state` (brain runs before the index core stored kind ``pixel``, no dtype)."""
        vectors = decode_array(state["vectors"]) if "vectors" in state else None  # decoded once
        dtype = state.get("dtype") or (vectors.dtype if vectors is not None else np.float64)
        index = cls(state.get("dim") or vectors.shape[1], dtype)
        if len(state.get("keys") or ()):
            index.store.adopt(state["keys"], vectors)
        return index
