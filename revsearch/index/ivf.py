"""K-means inverted-file (IVF) index: search scans only the ``nprobe`` nearest clusters."""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

import numpy as np

from revsearch.array_codec import decode_array
from revsearch.index.hits import Hit, squared_l2
from revsearch.index.protocol import InMemoryIndex
from revsearch.index.store import VectorStore

#: K-means is fitted on at most this many vectors per cluster; the rest are assigned. On 1M synthetic
#: vectors (4,000 lists) 32 gave recall@10 0.937 at 9.6% scanned, 64 gave 0.967 at 9.1% (fit 31 s -> 53 s).
TRAINING_POINTS_PER_CLUSTER = 64
#: Distance-matrix cells computed at once when assigning vectors to centres.
_CHUNK_CELLS = 16_000_000
#: Relative float32 error allowed for in the bisector bound (distances are float32).
_BOUND_SLACK = 1e-5
#: Query x list cells of bisector bounds computed at once.
_BOUND_CELLS = 4_000_000
#: A view holding at least this fraction of the vectors is searched by scanning whole lists and
#: masking; a sparser one by gathering its own rows.
_DENSE_FRACTION = 0.25


def default_n_clusters(n_vectors: int) -> int:
    """About 4 * sqrt(N) clusters, the usual IVF rule of thumb, at least 1 and at most N."""
    return max(1, min(n_vectors, int(round(4 * math.sqrt(max(n_vectors, 1))))))


def default_nprobe(n_clusters: int) -> int:
    """Probe 1/20 of the clusters. Queries fall into the larger clusters more often, so this scans
    ~6-11% of the vectors: recall@10 against exact ~0.96 on Caltech-101 descriptors and ~0.97 on 1M
    synthetic vectors (docs/benchmarks.md, vector search)."""
    return max(1, math.ceil(n_clusters / 20))


#: Indexes of at most this many vector components (N x dim) are searched exactly: at 10k 128-d vectors
#: (1.3M) exact search took 0.19 ms per query and the default probes 0.16 ms (docs/benchmarks.md,
#: vector search), so below this size exact results cost nothing measurable.
EXACT_CELLS = 1 << 21

#: The arrays of :meth:`IVFIndex.lists_state`.
_LIST_ARRAYS = ("assignments", "center_distances", "sequence")


class IVFIndex(InMemoryIndex):
    """Vectors grouped by nearest K-means centre (cluster id and distance kept), rows sorted by cluster
    (lazily after updates) so a probe reads one block; ties break by insertion order, as exact search does."""

    kind = "kmeans"

    def __init__(self, centroids: np.ndarray, nprobe: int | None = None):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.store = VectorStore(self.centroids.shape[1], np.float32)
        self.nprobe = nprobe or default_nprobe(self.n_clusters)
        self.assignments = np.empty(0, dtype=np.int32)
        self.center_distances = np.empty(0, dtype=np.float32)
        self._sequence = np.empty(0, dtype=np.int64)  # insertion order of each row
        self._next_sequence = 0
        self._centroid_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self._offsets = np.zeros(self.n_clusters + 1, dtype=np.int64)
        self._lists_stale = False

    @classmethod
    def fit(
        cls, vectors: np.ndarray, n_clusters: int | None = None, nprobe: int | None = None, seed: int = 0
    ) -> IVFIndex:
        """Fit K-means centres on (a sample of) ``vectors``. Vectors are not added: call add()."""
        data = np.asarray(vectors, dtype=np.float32)
        n_clusters = n_clusters or default_n_clusters(len(data))
        if not 1 <= n_clusters <= len(data):
            raise ValueError(f"n_clusters must be in [1, {len(data)}], got {n_clusters}")
        cap = TRAINING_POINTS_PER_CLUSTER * n_clusters
        if len(data) > cap:
            data = data[np.random.default_rng(seed).choice(len(data), cap, replace=False)]
        from sklearn.cluster import KMeans  # only fitting needs scikit-learn

        # random initialisation (as faiss does): k-means++ seeding was 20x slower here for 400 lists
        kmeans = KMeans(n_clusters=n_clusters, init="random", n_init=1, max_iter=25, random_state=seed).fit(data)
        return cls(kmeans.cluster_centers_, nprobe)

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    def keys(self) -> list[str]:
        """Keys in insertion order."""
        return [self.store.keys[i] for i in np.argsort(self._sequence, kind="stable")]

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre id and L2 distance to it for each vector (in chunks: bounded memory)."""
        q = self.store.check_dim(vectors)
        ids = np.empty(len(q), np.int32)
        dists = np.empty(len(q), np.float32)
        step = max(1, _CHUNK_CELLS // self.n_clusters)
        for start in range(0, len(q), step):
            dist = squared_l2(q[start : start + step], self.centroids, self._centroid_norms)
            chunk_ids = dist.argmin(axis=1)
            ids[start : start + step] = chunk_ids
            dists[start : start + step] = np.sqrt(dist[np.arange(len(chunk_ids)), chunk_ids])
        return ids, dists

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        rows = self.store.add(keys, vectors)
        ids, dists = self.assign(self.store.vectors[rows])
        grow = len(self.store) - len(self.assignments)
        self.assignments = np.concatenate([self.assignments, np.zeros(grow, np.int32)])
        self.center_distances = np.concatenate([self.center_distances, np.zeros(grow, np.float32)])
        new_sequence = np.arange(self._next_sequence, self._next_sequence + grow)
        self._sequence, self._next_sequence = np.concatenate([self._sequence, new_sequence]), self._next_sequence + grow
        self.assignments[rows], self.center_distances[rows] = ids, dists
        self._lists_stale = True

    def remove(self, keys: list[str]) -> None:
        keep = self.store.remove(keys)
        self.assignments, self.center_distances = self.assignments[keep], self.center_distances[keep]
        self._sequence = self._sequence[keep]
        self._lists_stale = True

    def _sort_lists(self) -> None:
        """Sort rows by cluster (the inverted lists, contiguous) and compute per-cluster offsets."""
        if not self._lists_stale:
            return
        order = np.argsort(self.assignments, kind="stable")
        if np.any(order != np.arange(len(order))):
            self.store.permute(order)
            self.assignments, self.center_distances = self.assignments[order], self.center_distances[order]
            self._sequence = self._sequence[order]
        counts = np.bincount(self.assignments, minlength=self.n_clusters)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._lists_stale = False

    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.assignments, minlength=self.n_clusters)

    def clusters_of(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cluster id and distance to its centre for each key."""
        rows = self.store.rows_of(keys)
        return self.assignments[rows], self.center_distances[rows]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: Collection[str] | None = None,
        reverse: bool = False,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest stored vectors: approximate (``nprobe`` lists) over the whole index above
        :data:`EXACT_CELLS`, else exact; exact among the ``allowed`` keys when given; ``reverse``
        (farthest first) scans every vector."""
        if allowed is None and not reverse and len(self.store) * self.dim > EXACT_CELLS:
            return self.search_with_stats(queries, k, nprobe)[0]
        q = self.store.check_dim(queries)
        self._sort_lists()
        rows = np.arange(len(self.store)) if allowed is None else self.store.rows_in(allowed)
        if reverse or len(rows) <= self._probe_budget(nprobe):
            return [self._hits(*self._exhaustive(query, rows, k, reverse)) for query in q]
        return [self._hits(*found) for found in self._bounded_search(q, rows, k, nprobe)]

    def search_with_stats(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[list[list[Hit]], float]:
        """Results and the mean fraction of indexed vectors scanned per query."""
        q = self.store.check_dim(queries)
        self._sort_lists()
        nprobe = min(nprobe or self.nprobe, self.n_clusters)
        centre_dist = squared_l2(q, self.centroids, self._centroid_norms)
        probes = np.argpartition(centre_dist, nprobe - 1, axis=1)[:, :nprobe]
        sizes, wanted = np.diff(self._offsets), min(k, len(self.store))
        results, scanned = [], 0
        for query, clusters, centres in zip(q, probes, centre_dist):
            if sizes[clusters].sum() < wanted:  # the nearest lists hold fewer than k: probe on until they do
                order = np.argsort(centres)
                clusters = order[: int(np.searchsorted(np.cumsum(sizes[order]), wanted)) + 1]
            rows, dist = self._scan(query, np.sort(clusters))
            scanned += len(rows)
            results.append([Hit(self.store.keys[r], float(dist[i])) for i, r in self._nearest(rows, dist, k)])
        return results, scanned / max(1, len(q) * len(self.store))

    def range_search(
        self, queries: np.ndarray, radius: float, allowed: Collection[str] | None = None, nprobe: int | None = None
    ) -> list[list[Hit]]:
        """Every stored vector (among ``allowed``) within squared distance ``radius``, nearest first.

        Exact by default: only lists whose Voronoi cell (bisector bound) is within ``radius`` are scanned.
        ``nprobe``: at most that many lists of smallest bound (approximate; for high-dimensional self-joins).
        Chunks of queries find their (query, list) pairs; every ~``_BOUND_CELLS`` pairs, each list is
        scanned once for all its queries (one matrix product per list, bounded memory).
        """
        q = self.store.check_dim(queries)
        self._sort_lists()
        keep = None if allowed is None else self._row_mask(self.store.rows_in(allowed))
        between = squared_l2(self.centroids, self.centroids, self._centroid_norms)
        bounds = np.sqrt(between, out=between) * np.float32(math.sqrt(radius))  # (K, K) float32
        found, pairs, held = [], [], 0
        step = max(1, _BOUND_CELLS // self.n_clusters)
        for start in range(0, len(q), step):
            query_ids, lists = self._reached_lists(q[start : start + step], bounds, nprobe)
            pairs.append((query_ids + start, lists))
            held += len(lists)
            if held >= _BOUND_CELLS or start + step >= len(q):
                found.extend(self._scan_lists(q, *(np.concatenate(p) for p in zip(*pairs)), radius, keep))
                pairs, held = [], 0
        return self._group_hits(len(q), found)

    def _reached_lists(self, q: np.ndarray, bounds: np.ndarray, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(query, list) pairs where the list may hold a vector within the radius: the query is within
        sqrt(radius) of the A|B bisector (A: its nearest centre, B: the list), i.e. h_B - h_A <=
        sqrt(radius) |cA - cB| (``bounds``) with h = |c|^2 / 2 - q.c, less a float32 slack (per query,
        for the largest centre norm: looser, never tighter, than needed)."""
        h = q @ self.centroids.T
        np.subtract(0.5 * self._centroid_norms, h, out=h)
        own = h.argmin(axis=1)
        slack = 0.5 * _BOUND_SLACK * (np.einsum("ij,ij->i", q, q) + self._centroid_norms.max())
        h -= (h[np.arange(len(q)), own] + slack)[:, None]
        reach = h <= bounds[own]
        if nprobe is not None and nprobe < self.n_clusters:  # the nprobe nearest centres
            reach &= h <= np.partition(h, nprobe - 1, axis=1)[:, nprobe - 1 : nprobe]
        return np.divmod(np.flatnonzero(reach), self.n_clusters)  # flat: 15x faster than 2-d nonzero

    def _scan_lists(self, q: np.ndarray, query_ids: np.ndarray, lists: np.ndarray, radius: float, keep):
        """(query ids, rows, distances) within ``radius``: each list against all its queries at once."""
        by_list = np.argsort(lists, kind="stable")
        query_ids, lists = query_ids[by_list], lists[by_list]
        splits = np.flatnonzero(np.diff(lists)) + 1
        for members, cluster in zip(np.split(query_ids, splits), lists[np.r_[0, splits]] if len(lists) else []):
            lo, hi = self._offsets[cluster], self._offsets[cluster + 1]
            rows = np.arange(lo, hi) if keep is None else lo + np.flatnonzero(keep[lo:hi])
            if not len(rows):
                continue
            vectors, norms = self.store.vectors[rows], self.store.sq_norms[rows]
            for part in np.array_split(members, -(-len(members) * len(rows) // _BOUND_CELLS)):
                dist = squared_l2(q[part], vectors, norms)
                qi, ri = np.divmod(np.flatnonzero(dist <= radius), len(rows))
                if len(qi):
                    yield part[qi], rows[ri], dist[qi, ri]

    def _group_hits(self, n_queries: int, found: list) -> list[list[Hit]]:
        """Per-query hit lists (nearest first, ties in insertion order) from (query, row, dist) arrays."""
        results: list[list[Hit]] = [[] for _ in range(n_queries)]
        if not found:
            return results
        qs, rows, dist = (np.concatenate(parts) for parts in zip(*found))
        order = np.lexsort((self._sequence[rows], dist, qs))
        keys = self.store.keys
        for query, row, d in zip(qs[order].tolist(), rows[order].tolist(), dist[order].tolist()):
            results[query].append(Hit(keys[row], d))
        return results

    def _cell_gaps(self, q: np.ndarray, d2: np.ndarray | None = None) -> np.ndarray:
        """Lower bound of the squared distance from each query to any vector of each list: a vector of
        list B lies beyond the A|B bisector (A: the query's nearest centre), (|q-cB|^2 - |q-cA|^2) / (2 |cA-cB|)."""
        if d2 is None:  # squared distances from the queries to the centres
            d2 = squared_l2(q, self.centroids, self._centroid_norms).astype(np.float64)
        own = d2.argmin(axis=1)
        own_d2 = d2[np.arange(len(q)), own][:, None]
        between = np.sqrt(squared_l2(self.centroids[own], self.centroids, self._centroid_norms)).astype(np.float64)
        slack = _BOUND_SLACK * (np.einsum("ij,ij->i", q, q)[:, None] + self._centroid_norms[None, :])
        gap = np.maximum(d2 - own_d2 - slack, 0.0) / np.maximum(2.0 * between, np.finfo(np.float64).tiny)
        gap[between == 0.0] = 0.0
        return gap**2

    def _probe_budget(self, nprobe: int | None) -> int:
        """How many vectors a search of ``nprobe`` lists scans on average."""
        return int(len(self.store) * min(nprobe or self.nprobe, self.n_clusters) / self.n_clusters)

    def _exhaustive(
        self, query: np.ndarray, rows: np.ndarray, k: int, reverse: bool
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Compare the query with every one of ``rows``."""
        dist = self._row_distances(query, rows)
        return rows, dist, self._nearest(rows, -dist if reverse else dist, k)

    def _row_distances(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Squared distances from ``query`` to the vectors of ``rows``."""
        return np.maximum(query @ query - 2.0 * (self.store.vectors[rows] @ query) + self.store.sq_norms[rows], 0.0)

    def _bounded_search(self, q: np.ndarray, rows: np.ndarray, k: int, nprobe: int | None):
        """Exact top-k among ``rows``: lists in order of their bisector bound, ``nprobe`` at first,
        then twice as many each round, until no unscanned list can hold a nearer vector."""
        starts = np.searchsorted(rows, self._offsets)  # rows are sorted, so grouped by list
        lists = np.flatnonzero(starts[1:] > starts[:-1])
        keep = self._row_mask(rows) if len(rows) >= _DENSE_FRACTION * len(self.store) else None
        step = max(1, _BOUND_CELLS // self.n_clusters)
        for start in range(0, len(q), step):
            gaps = self._cell_gaps(q[start : start + step])[:, lists]
            for query, gap in zip(q[start : start + step], gaps):
                order = np.argsort(gap, kind="stable")
                yield self._scan_until_exact(
                    query, k, lists[order], gap[order], rows, starts, keep, min(nprobe or self.nprobe, self.n_clusters)
                )

    def _scan_until_exact(self, query, k, lists, gaps, rows, starts, keep, first):
        best_rows, best_dist = np.empty(0, np.int64), np.empty(0, np.float32)
        pos, batch = 0, first
        while pos < len(lists):
            chosen = np.sort(lists[pos : pos + batch])
            pos, batch = pos + batch, 2 * batch
            if keep is not None:
                got_rows, got_dist = self._scan(query, chosen)
                mask = keep[got_rows]
                got_rows, got_dist = got_rows[mask], got_dist[mask]
            else:
                got_rows = np.concatenate([rows[starts[c] : starts[c + 1]] for c in chosen])
                got_dist = self._row_distances(query, got_rows)
            best_rows = np.concatenate([best_rows, got_rows])
            best_dist = np.concatenate([best_dist, got_dist])
            nearest = self._nearest(best_rows, best_dist, k)
            best_rows, best_dist = best_rows[[i for i, _ in nearest]], best_dist[[i for i, _ in nearest]]
            if len(best_rows) >= k and pos < len(lists) and best_dist[-1] < gaps[pos]:
                break
        return best_rows, best_dist, self._nearest(best_rows, best_dist, k)

    def _row_mask(self, rows: np.ndarray) -> np.ndarray:
        keep = np.zeros(len(self.store), dtype=bool)
        keep[rows] = True
        return keep

    def _hits(self, rows: np.ndarray, dist: np.ndarray, nearest: list[tuple[int, int]]) -> list[Hit]:
        return [Hit(self.store.keys[r], float(dist[i])) for i, r in nearest]

    def _scan(self, query: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers and squared distances of every vector in ``clusters`` (one block each)."""
        starts, ends = self._offsets[clusters], self._offsets[clusters + 1]
        sizes = ends - starts
        dots = np.empty(int(sizes.sum()), dtype=np.float32)
        vectors, pos = self.store.vectors, 0
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            np.matmul(vectors[lo:hi], query, out=dots[pos : pos + hi - lo])
            pos += hi - lo
        rows = np.arange(len(dots)) + np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
        dist = np.maximum(query @ query - 2.0 * dots + self.store.sq_norms[rows], 0.0)
        return rows, dist

    def _nearest(self, rows: np.ndarray, dist: np.ndarray, k: int) -> list[tuple[int, int]]:
        """(position in ``dist``, row) of the ``k`` smallest, ties in insertion order."""
        k = min(k, len(dist))
        if k <= 0:
            return []
        candidates = np.flatnonzero(dist <= np.partition(dist, k - 1)[k - 1])
        order = np.lexsort((self._sequence[rows[candidates]], dist[candidates]))[:k]
        return [(int(i), int(rows[i])) for i in candidates[order]]

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "n_clusters": self.n_clusters, "nprobe": self.nprobe}

    def lists_state(self) -> dict[str, np.ndarray]:
        """The inverted lists, for :meth:`from_lists` (sorts the store's rows by cluster first)."""
        self._sort_lists()
        return {"assignments": self.assignments, "center_distances": self.center_distances, "sequence": self._sequence}

    @classmethod
    def from_lists(
        cls,
        centroids: np.ndarray,
        nprobe: int | None,
        keys: list[str],
        vectors: np.ndarray,
        lists: dict[str, np.ndarray],
        sq_norms: np.ndarray | None = None,
    ) -> IVFIndex:
        """Rebuild from :meth:`lists_state` and the rows it ordered, without assigning any vector
        (nor reading one, when the rows' squared norms are given)."""
        index = cls(centroids, nprobe)
        if len(keys):
            index.store.adopt(keys, vectors, sq_norms)
            index.assignments = np.asarray(lists["assignments"], np.int32)
            index.center_distances = np.asarray(lists["center_distances"], np.float32)
            index._sequence = np.asarray(lists["sequence"], np.int64)
            index._next_sequence = int(index._sequence.max()) + 1
            index._lists_stale = True  # rows are already in order: only the offsets are computed
        return index

    def save(self, directory: Path) -> None:
        """Centres and inverted lists (``ivf.npz``), and the rows in list order."""
        lists = self.lists_state()  # first: it orders the rows by cluster
        self.store.save(directory, "vectors")
        np.savez(directory / "ivf.npz", centroids=self.centroids, **lists)

    @classmethod
    def load(cls, directory: Path, config: dict) -> IVFIndex:
        """Inverse of :meth:`save`; folders saved before the lists were stored are re-assigned."""
        with np.load(directory / "ivf.npz") as saved:
            centroids = saved["centroids"]
            lists = {name: saved[name] for name in _LIST_ARRAYS if name in saved}
        store = VectorStore.load(directory, "vectors")
        if len(lists) == len(_LIST_ARRAYS):
            return cls.from_lists(centroids, config.get("nprobe"), list(store.keys), store.vectors, lists)
        index = cls(centroids, config.get("nprobe"))
        if len(store):
            index.add(store.keys, store.vectors)
        return index

    def arrays_state(self) -> dict:
        """``config()``, the centres, the inverted lists and the rows in list order."""
        lists = self.lists_state()  # first: it orders the rows by cluster
        return {
            **self.config(),
            "centroids": self.centroids,
            "keys": list(self.store.keys),
            "vectors": self.store.vectors,
            "sq_norms": self.store.sq_norms,
            "lists": dict(lists),
        }

    @classmethod
    def from_state(cls, state: dict) -> IVFIndex:
        """Inverse of :meth:`state` (also the forms brain runs stored before, without ``lists``)."""
        centroids = decode_array(state["centroids"])
        if state.get("lists") and len(state.get("keys") or ()):
            lists = {name: decode_array(array) for name, array in state["lists"].items()}
            norms = decode_array(state["sq_norms"]) if "sq_norms" in state else None
            return cls.from_lists(
                centroids, state.get("nprobe"), state["keys"], decode_array(state["vectors"]), lists, norms
            )
        index = cls(centroids, state.get("nprobe"))
        index._add_state(state)
        return index
