"""Database-side augmentation (alpha-DBA, Radenović et al. 2018), kept consistent under updates.

Each stored unit vector ``x`` is replaced by the normalised sum of itself and its top-``n`` nearest
other vectors ``x_i``, weighted by ``max(x . x_i, 0) ** alpha``. :class:`DBAGraph` keeps the originals
and neighbour lists, so an update recomputes exactly the augmented vectors that change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from revsearch.features.pca import l2_normalize
from revsearch.retrieval.query_expansion import similarity_weights

#: Similarity-matrix cells computed at once (bounds memory at large N).
_CHUNK_CELLS = 16_000_000


def nearest_others(
    queries: np.ndarray, database: np.ndarray, n: int, self_rows: np.ndarray | None = None
) -> np.ndarray:
    """Row numbers (nq, min(n, N - 1)) of each query's ``n`` most similar database rows, most similar
    first; ``self_rows[i]`` (the query's own row, or -1) is never returned for query ``i``."""
    n = min(n, len(database) - (1 if self_rows is not None else 0))
    out = np.empty((len(queries), max(n, 0)), dtype=np.int64)
    if n <= 0:
        return out
    step = max(1, _CHUNK_CELLS // max(len(database), 1))
    for start in range(0, len(queries), step):
        sims = queries[start : start + step] @ database.T
        if self_rows is not None:
            rows = self_rows[start : start + step]
            own = rows >= 0
            sims[np.flatnonzero(own), rows[own]] = -np.inf
        part = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start : start + step] = np.take_along_axis(part, order, axis=1)
    return out


def augment(vectors: np.ndarray, neighbours: np.ndarray, rows: np.ndarray, alpha: float) -> np.ndarray:
    """Augmented vectors of ``rows`` given each one's neighbour rows (``neighbours``, aligned with ``rows``)."""
    own = vectors[rows]
    if neighbours.shape[1] == 0:
        return l2_normalize(own)
    x = vectors[neighbours]
    w = similarity_weights(np.einsum("qd,qnd->qn", own, x), alpha)
    return l2_normalize(own + np.einsum("qn,qnd->qd", w, x))


class DBAGraph:
    """Original vectors by key, each one's top-``n`` neighbours, and the augmented vectors they give."""

    def __init__(self, n: int, alpha: float, dim: int):
        if n < 1:
            raise ValueError(f"DBA needs n >= 1 neighbours, got {n}")
        self.n, self.alpha = int(n), float(alpha)
        self.keys: list[str] = []
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.neighbours = np.empty((0, 0), dtype=np.int64)  # rows into self.vectors

    def __len__(self) -> int:
        return len(self.keys)

    def augmented(self, keys: Sequence[str] | None = None) -> np.ndarray:
        """Augmented vectors of ``keys`` (None: all, in stored order)."""
        rows = np.arange(len(self.keys)) if keys is None else np.array(self._rows(keys), dtype=np.int64)
        return augment(self.vectors, self.neighbours[rows], rows, self.alpha)

    def originals(self, keys: Sequence[str]) -> np.ndarray:
        """Original (not augmented) vectors of ``keys``."""
        return self.vectors[np.array(self._rows(keys), dtype=np.int64)]

    def _rows(self, keys: Sequence[str]) -> list[int]:
        where = {k: i for i, k in enumerate(self.keys)}
        return [where[k] for k in keys]

    def update(self, add_keys: Sequence[str], add_vectors: np.ndarray, remove_keys: Sequence[str] = ()) -> list[str]:
        """Remove then add (re-adding a key replaces its vector); returns the keys whose augmented
        vector changed (new ones included), for the caller to rewrite in its store."""
        old_keys = list(self.keys)
        old_nb_keys = [[old_keys[j] for j in row] for row in self.neighbours]
        replaced = set(remove_keys) | set(add_keys)
        keep = [i for i, k in enumerate(old_keys) if k not in replaced]
        dim = self.vectors.shape[1] if len(self.keys) else np.shape(add_vectors)[-1]  # an empty graph takes any
        new = np.asarray(add_vectors, dtype=np.float32).reshape(len(add_keys), dim)
        self.keys = [old_keys[i] for i in keep] + list(add_keys)
        self.vectors = np.concatenate([self.vectors[keep].reshape(len(keep), dim), new])
        position = {k: i for i, k in enumerate(self.keys)}
        rows = np.arange(len(self.keys))
        n = min(self.n, max(len(self.keys) - 1, 0))
        # a kept vector needs new neighbours if one of its own went, or a new vector beats its n-th
        stale = np.array(
            [len(old_nb_keys[k]) != n or any(key in replaced for key in old_nb_keys[k]) for k in keep], dtype=bool
        )
        if len(add_keys) and len(keep) and n:
            kept, added = self.vectors[: len(keep)], self.vectors[len(keep) :]
            last = np.array([position[old_nb_keys[k][-1]] if not stale[i] else 0 for i, k in enumerate(keep)])
            kth = np.where(stale, np.inf, np.einsum("ij,ij->i", kept, self.vectors[last]))
            step = max(1, _CHUNK_CELLS // len(kept))
            best = np.max([(kept @ added[i : i + step].T).max(axis=1) for i in range(0, len(added), step)], axis=0)
            stale |= best >= kth
        recompute = np.concatenate([np.flatnonzero(stale), np.arange(len(keep), len(self.keys))]).astype(np.int64)
        neighbours = np.empty((len(self.keys), n), dtype=np.int64)
        for i, k in enumerate(keep):
            if not stale[i]:
                neighbours[i] = [position[key] for key in old_nb_keys[k]]
        neighbours[recompute] = nearest_others(self.vectors[recompute], self.vectors, n, rows[recompute])
        self.neighbours = neighbours
        return [self.keys[i] for i in recompute]

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save (keys go alongside as JSON)."""
        return {
            "vectors": self.vectors,
            "neighbours": self.neighbours,
            "params": np.array([self.n, self.alpha], dtype=np.float64),
        }

    @classmethod
    def from_state(cls, keys: list[str], state: dict[str, np.ndarray]) -> DBAGraph:
        n, alpha = state["params"]
        graph = cls(int(n), float(alpha), state["vectors"].shape[1])
        graph.keys, graph.vectors, graph.neighbours = list(keys), state["vectors"], state["neighbours"]
        return graph
