"""alpha-weighted query expansion (alpha-QE, Radenović et al. 2018).

The query is replaced by the normalised sum of itself (weight 1) and its top-``n`` neighbours ``x_i``
(weights ``max(q . x_i, 0) ** alpha``), and searched again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from revsearch.features.pca import l2_normalize
from revsearch.index.hits import Hit


def similarity_weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    """``max(s, 0) ** alpha``: negative similarities get no weight."""
    return np.maximum(similarities, 0.0) ** alpha


def expand(queries: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """(nq, d) unit queries and (nq, n, d) neighbour vectors -> (nq, d) expanded unit queries."""
    q = np.asarray(queries, dtype=np.float32)
    x = np.asarray(neighbours, dtype=np.float32)
    if x.shape[1] == 0:
        return l2_normalize(q)
    w = similarity_weights(np.einsum("qd,qnd->qn", q, x), alpha)
    return l2_normalize(q + np.einsum("qn,qnd->qd", w, x))


def expanded_search(
    search: Callable[[np.ndarray, int], list[list[Hit]]],
    fetch: Callable[[list[str]], np.ndarray],
    queries: np.ndarray,
    k: int,
    n: int,
    alpha: float,
) -> list[list[Hit]]:
    """``search(queries, k)``, each query expanded with its top-``n`` hits (``fetch``: stored vectors by key)."""
    if n <= 0:
        return search(queries, k)
    first = search(queries, max(n, 1))
    neighbours = np.zeros((len(first), n, queries.shape[1]), dtype=np.float32)  # zero rows: fewer than n hits
    for i, hits in enumerate(first):
        if hits:
            neighbours[i, : len(hits[:n])] = fetch([h.key for h in hits[:n]])
    return search(expand(queries, neighbours, alpha), k)
