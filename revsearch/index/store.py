"""Keys and vectors held in memory, with upsert / delete by key and save / load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from revsearch.errors import IndexMismatchError


class VectorStore:
    """An ordered set of (key, vector) rows; re-adding a key replaces its vector."""

    def __init__(self, dim: int, dtype: np.dtype | type = np.float32):
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self.keys: list[str] = []
        self._row_of: dict[str, int] | None = {}  # key -> row; None: built from ``keys`` when first needed
        # storage grows by doubling, so adding chunk after chunk costs O(N) in all, not O(N^2)
        self._vectors = np.empty((0, self.dim), dtype=self.dtype)
        self._norms = np.empty(0, dtype=self.dtype)

    @property
    def _row(self) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = dict(zip(self.keys, range(len(self.keys))))
        return self._row_of

    @property
    def vectors(self) -> np.ndarray:
        """The stored vectors, one row per key (a view: do not keep it across updates)."""
        return self._vectors[: len(self.keys)]

    @property
    def sq_norms(self) -> np.ndarray:
        return self._norms[: len(self.keys)]

    def _reserve(self, rows: int) -> None:
        if rows > len(self._vectors):
            capacity = max(rows, 2 * len(self._vectors), 1024)
            grown = np.empty((capacity, self.dim), dtype=self.dtype)
            grown[: len(self.keys)] = self.vectors
            norms = np.empty(capacity, dtype=self.dtype)
            norms[: len(self.keys)] = self.sq_norms
            self._vectors, self._norms = grown, norms

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def check_dim(self, vectors: np.ndarray) -> np.ndarray:
        """Return ``vectors`` as a 2-D array of this store's dtype, or raise on a wrong dimension."""
        arr = np.asarray(vectors, dtype=self.dtype)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors have dimension {arr.shape[-1]}, the index expects {self.dim}")
        return np.ascontiguousarray(arr)

    def add(self, keys: list[str], vectors: np.ndarray) -> np.ndarray:
        """Insert or replace rows; returns the row numbers written."""
        arr = self.check_dim(vectors)
        if len(keys) != arr.shape[0]:
            raise ValueError(f"{len(keys)} keys for {arr.shape[0]} vectors")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys in one add() call")
        rows = np.empty(len(keys), dtype=np.int64)
        new_keys = []
        start = len(self.keys)
        for i, key in enumerate(keys):
            row = self._row.get(key)
            if row is None:
                row = self._row[key] = start + len(new_keys)
                new_keys.append(key)
            rows[i] = row
        self._reserve(start + len(new_keys))
        self.keys.extend(new_keys)
        self._vectors[rows] = arr
        self._norms[rows] = np.einsum("ij,ij->i", arr, arr)
        return rows

    def adopt(self, keys: list[str], vectors: np.ndarray, sq_norms: np.ndarray | None = None) -> None:
        """Fill an empty store with ``vectors`` as they are, one row per (unique) key: a memory-mapped
        array is not copied, nor read when its squared norms are given."""
        if len(self.keys):
            raise ValueError("adopt() fills an empty store")
        arr = self.check_dim(vectors)
        keys = list(keys)
        if len(keys) != arr.shape[0]:
            raise ValueError(f"{len(keys)} keys for {arr.shape[0]} vectors")
        self.keys, self._row_of = keys, None  # the key -> row map costs 0.7 s at 1M: made when first used
        if sq_norms is None or len(sq_norms) != len(keys):
            sq_norms = np.einsum("ij,ij->i", arr, arr)
        self._vectors, self._norms = arr, np.asarray(sq_norms, dtype=self.dtype)

    def remove(self, keys: list[str]) -> np.ndarray:
        """Delete rows by key (unknown keys are ignored); returns the boolean mask of rows kept."""
        drop = {self._row[k] for k in keys if k in self._row}
        keep = np.ones(len(self.keys), dtype=bool)
        keep[list(drop)] = False
        if drop:
            self._vectors, self._norms = self.vectors[keep], self.sq_norms[keep]
            self.keys = [k for k, kept in zip(self.keys, keep) if kept]
            self._row_of = None
        return keep

    def permute(self, order: np.ndarray) -> None:
        """Reorder the rows: row ``i`` becomes the old row ``order[i]``."""
        n = len(self.keys)
        self._vectors[:n], self._norms[:n] = self.vectors[order], self.sq_norms[order]
        self.keys = [self.keys[i] for i in order]
        self._row_of = None

    def rows_of(self, keys: list[str]) -> list[int]:
        return [self._row[k] for k in keys]

    def rows_in(self, keys) -> np.ndarray:
        """Sorted row numbers of those ``keys`` that are stored (others are ignored)."""
        row = self._row
        return np.sort(np.fromiter((row[k] for k in keys if k in row), dtype=np.int64))

    def save(self, directory: Path, name: str) -> None:
        """Write vectors and keys, in row order."""
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / f"{name}.npy", self.vectors)
        (directory / f"{name}.keys.json").write_text(json.dumps(list(self.keys)))

    @classmethod
    def load(cls, directory: Path, name: str) -> VectorStore:
        vectors = np.load(directory / f"{name}.npy")
        keys = json.loads((directory / f"{name}.keys.json").read_text())
        store = cls(vectors.shape[1], vectors.dtype)
        if keys:
            store.add(keys, vectors)
        return store
