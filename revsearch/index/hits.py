"""Search results and the exact top-k selection every backend shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One search result: the indexed item's key (path or sample id) and its distance."""

    key: str
    distance: float


def top_k(distances: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(distances, kind="stable")[:k]`` (ties in index order), but O(n) for large inputs."""
    n = distances.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    candidates = np.flatnonzero(distances <= np.partition(distances, k - 1)[k - 1]) if k < n else np.arange(n)
    return candidates[np.argsort(distances[candidates], kind="stable")[:k]]


def nearest_of(hit_lists: list[list[Hit]], k: int) -> list[Hit]:
    """The ``k`` nearest keys over several hit lists of the same items, each at its smallest distance."""
    best: dict[str, float] = {}
    for hits in hit_lists:
        for hit in hits:
            best[hit.key] = min(hit.distance, best.get(hit.key, hit.distance))
    return [Hit(key, dist) for key, dist in sorted(best.items(), key=lambda item: item[1])[:k]]


def squared_l2(queries: np.ndarray, database: np.ndarray, database_sq_norms: np.ndarray) -> np.ndarray:
    """Squared L2 distances (nq, n) via ||q||^2 - 2 q.x + ||x||^2, in the inputs' dtype."""
    q_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
    dist = q_norms - 2.0 * (queries @ database.T) + database_sq_norms[None, :]
    np.maximum(dist, 0.0, out=dist)
    return dist
