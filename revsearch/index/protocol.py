"""The one index interface of the exact, K-means IVF and Milvus indexes (made by :mod:`revsearch.index.registry`).

Keys are strings (file paths, sample ids); distances are squared L2.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from revsearch.array_codec import decode_array, encode_arrays
from revsearch.index.hits import Hit
from revsearch.index.store import VectorStore


@runtime_checkable
class VectorIndex(Protocol):
    """Vectors by key: add / remove / search, read back, persisted through ``config`` (+ ``save``)."""

    kind: str
    #: Whether ``search(..., reverse=True)`` (farthest first) is available.
    supports_least_similarity: bool

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def keys(self) -> list[str]: ...

    def contains(self, keys: Collection[str]) -> set[str]: ...

    def vectors(self, keys: list[str]) -> np.ndarray:
        """Stored vectors for ``keys``, in that order; KeyError if one is not stored."""

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Insert or replace (an existing key gets the new vector)."""

    def remove(self, keys: list[str]) -> None:
        """Delete keys (unknown ones are ignored)."""

    def search(
        self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None, reverse: bool = False
    ) -> list[list[Hit]]:
        """The ``k`` nearest (``reverse``: farthest) vectors among ``allowed`` keys (None: all)."""

    def range_search(
        self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None
    ) -> list[list[Hit]]:
        """Every vector (among ``allowed``) within squared distance ``radius``, nearest first."""

    def config(self) -> dict:
        """JSON-able description (``kind`` first) that re-opens the index with its saved files."""

    def save(self, folder: Path) -> None:
        """Write the index's files (nothing for a Milvus collection)."""

    def close(self) -> None: ...

    def drop(self) -> None:
        """Delete the vectors for good."""


class InMemoryIndex:
    """What the in-memory indexes share: a :class:`VectorStore`, read-back, and the inline state."""

    kind = ""
    supports_least_similarity = True
    store: VectorStore

    @property
    def dim(self) -> int:
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def keys(self) -> list[str]:
        return list(self.store.keys)

    def contains(self, keys: Collection[str]) -> set[str]:
        return {k for k in keys if k in self.store}

    def vectors(self, keys: list[str]) -> np.ndarray:
        return self.store.vectors[self.store.rows_of(list(keys))]

    def arrays_state(self) -> dict:
        """``config()`` plus keys and vectors (in key order), arrays as they are."""
        keys = self.keys()
        return {**self.config(), "keys": keys, "vectors": self.vectors(keys)}

    def state(self) -> dict:
        """:meth:`arrays_state`, JSON-able (arrays encoded inline)."""
        return encode_arrays(self.arrays_state())

    def _add_state(self, state: dict) -> None:
        if len(state.get("keys") or ()):
            self.add(state["keys"], decode_array(state["vectors"]))

    def close(self) -> None:
        """Nothing to release."""

    def drop(self) -> None:
        self.remove(self.keys())
