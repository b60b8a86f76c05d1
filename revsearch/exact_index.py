"""Exact (brute-force) squared-L2 search over vectors held in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .hits import Hit, squared_l2, top_k
from .vector_store import VectorStore

#: Distance-matrix cells computed at once (bounds memory for large query batches).
_CHUNK_CELLS = 32_000_000


class ExactIndex:
    """Every query is compared with every vector in one vectorised pass.

    ``dtype=float64`` makes distances on integer data (pixel thumbnails) exact, so results equal
    a naive per-pair loop, ties included.
    """

    kind = "exact"

    def __init__(self, dim: int, dtype: np.dtype | type = np.float32):
        self.store = VectorStore(dim, dtype)

    @property
    def dim(self) -> int:
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def keys(self) -> list[str]:
        return list(self.store.keys)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self.store.add(keys, vectors)

    def remove(self, keys: list[str]) -> None:
        self.store.remove(keys)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        q = self.store.check_dim(queries)
        n = max(len(self.store), 1)
        step = max(1, _CHUNK_CELLS // n)
        results: list[list[Hit]] = []
        for start in range(0, q.shape[0], step):
            dist = squared_l2(q[start : start + step], self.store.vectors, self.store.sq_norms)
            for row in dist:
                idx = top_k(row, k)
                results.append([Hit(self.store.keys[i], float(row[i])) for i in idx])
        return results

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "dtype": self.store.dtype.name}

    def save(self, directory: Path) -> None:
        self.store.save(directory, "vectors")

    @classmethod
    def load(cls, directory: Path, config: dict) -> "ExactIndex":
        index = cls(config["dim"], config["dtype"])
        index.store = VectorStore.load(directory, "vectors")
        return index
