"""K-means IVF: exact at full nprobe, fewer vectors scanned at small nprobe, updates in place."""

from __future__ import annotations

import numpy as np
import pytest

from revsearch import ExactIndex, IVFIndex
from revsearch.errors import IndexMismatchError


@pytest.fixture(scope="module")
def clustered():
    """2,000 vectors around 20 well-separated centres, plus 50 queries near random points."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32)).astype(np.float32) * 4
    vectors = (centres[rng.integers(0, 20, 2000)] + rng.normal(size=(2000, 32))).astype(np.float32)
    queries = (vectors[rng.integers(0, 2000, 50)] + 0.3 * rng.normal(size=(50, 32))).astype(np.float32)
    return [f"v{i}" for i in range(2000)], vectors, queries


def _exact(keys, vectors, queries, k):
    exact = ExactIndex(vectors.shape[1])
    exact.add(keys, vectors)
    return exact.search(queries, k)


def test_full_nprobe_equals_exact(clustered):
    keys, vectors, queries = clustered
    ivf = IVFIndex.fit(vectors, n_clusters=16)
    ivf.add(keys, vectors)
    results, scanned = ivf.search_with_stats(queries, k=10, nprobe=16)
    assert scanned == pytest.approx(1.0)
    for got, want in zip(results, _exact(keys, vectors, queries, 10)):
        assert [h.key for h in got] == [h.key for h in want]
        np.testing.assert_allclose([h.distance for h in got], [h.distance for h in want], rtol=1e-4, atol=1e-3)


def test_recall_grows_with_nprobe_and_scan_shrinks(clustered):
    keys, vectors, queries = clustered
    ivf = IVFIndex.fit(vectors, n_clusters=32)
    ivf.add(keys, vectors)
    truth = [{h.key for h in hits} for hits in _exact(keys, vectors, queries, 10)]
    recalls, scans = [], []
    for nprobe in (1, 4, 32):
        results, scanned = ivf.search_with_stats(queries, k=10, nprobe=nprobe)
        recalls.append(np.mean([len(t & {h.key for h in r}) / 10 for t, r in zip(truth, results)]))
        scans.append(scanned)
    assert recalls[0] <= recalls[1] <= recalls[2] == 1.0
    assert scans[0] < scans[1] < scans[2] == pytest.approx(1.0)
    assert scans[0] < 0.2


def test_cluster_ids_and_distances_are_nearest_centre(clustered):
    keys, vectors, _ = clustered
    ivf = IVFIndex.fit(vectors, n_clusters=8)
    ivf.add(keys, vectors)
    ids, dists = ivf.clusters_of(keys[:100])
    all_d = np.linalg.norm(vectors[:100, None, :] - ivf.centroids[None], axis=2)
    np.testing.assert_array_equal(ids, all_d.argmin(axis=1))
    np.testing.assert_allclose(dists, all_d.min(axis=1), rtol=1e-3, atol=1e-3)
    assert ivf.cluster_sizes().sum() == 2000


def test_add_replace_remove_and_reload(clustered, tmp_path):
    keys, vectors, queries = clustered
    ivf = IVFIndex.fit(vectors, n_clusters=8, nprobe=8)
    ivf.add(keys[:1500], vectors[:1500])
    ivf.add(keys[1000:], vectors[1000:])  # overlap re-added: replaced, not duplicated
    assert len(ivf) == 2000
    ivf.remove(keys[:10] + ["not-there"])
    assert len(ivf) == 1990 and "v0" not in {h.key for h in ivf.search(vectors[:1], 5)[0]}
    ivf.save(tmp_path)
    again = IVFIndex.load(tmp_path, ivf.config())
    assert [h.key for h in again.search(queries[:5], 10)[0]] == [h.key for h in ivf.search(queries[:5], 10)[0]]
    with pytest.raises(IndexMismatchError, match="dimension 5"):
        ivf.search(np.zeros((1, 5), np.float32), 3)


def test_allowed_reverse_and_range_search_equal_exact():
    """Searches restricted to allowed keys are exact (bisector-bounded), as are reverse and range search."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 16))
    vectors = (centres[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 16))).astype(np.float32)
    keys = [f"v{i}" for i in range(4000)]
    ivf = IVFIndex.fit(vectors, 64, nprobe=2)
    ivf.add(keys, vectors)
    exact = ExactIndex(16)
    exact.add(keys, vectors)
    queries = vectors[:30] + 0.01

    def same(got, want):
        return [[h.key for h in row] for row in got] == [[h.key for h in row] for row in want]

    for size in (20, 600, 3500):  # below the probe budget, sparse (gathered rows), dense (masked lists)
        allowed = {keys[i] for i in rng.choice(4000, size, replace=False)}
        assert same(ivf.search(queries, 10, allowed=allowed), exact.search(queries, 10, allowed=allowed))
    assert same(ivf.search(queries, 10, reverse=True), exact.search(queries, 10, reverse=True))
    for radius in (0.05, 1.0):
        assert same(ivf.range_search(queries, radius), exact.range_search(queries, radius))
        allowed = set(keys[::2])
        assert same(ivf.range_search(queries, radius, allowed), exact.range_search(queries, radius, allowed))


def test_range_search_with_nprobe_scans_only_the_nearest_lists():
    """With ``nprobe`` the range search is approximate: a subset of the exact pairs, each with its exact
    distance, that grows with nprobe and reaches the exact result when every list is probed."""
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(30, 24))
    vectors = (centres[rng.integers(0, 30, 3000)] + 0.8 * rng.normal(size=(3000, 24))).astype(np.float32)
    keys = [f"v{i}" for i in range(3000)]
    ivf = IVFIndex.fit(vectors, 50)
    ivf.add(keys, vectors)
    radius = float(np.quantile(((vectors[:200, None] - vectors[None, :200]) ** 2).sum(-1), 0.02))
    exact = {(q, h.key): h.distance for q, row in enumerate(ivf.range_search(vectors[:300], radius)) for h in row}
    found = []
    for nprobe in (1, 3, 50):
        pairs = {
            (q, h.key): h.distance
            for q, row in enumerate(ivf.range_search(vectors[:300], radius, nprobe=nprobe))
            for h in row
        }
        assert pairs.keys() <= exact.keys() and all(np.isclose(d, exact[p], atol=1e-3) for p, d in pairs.items())
        assert all((q, keys[q]) in pairs for q in range(300))  # each vector's own list is always probed
        found.append(len(pairs))
    assert found[0] < found[1] < found[2] == len(exact)


@pytest.mark.parametrize("k", [1, 10, 59, 60, 500])
def test_never_short_of_k_when_the_probed_lists_are_small(k):
    """One probed list of ~3 vectors cannot hold k: the search probes further lists, nearest first,
    until it has k candidates, and returns min(k, size) hits, each key once, nearest first."""
    rng = np.random.default_rng(k)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    index = IVFIndex.fit(vectors, 20, nprobe=1)
    index.add([f"v{i}" for i in range(60)], vectors)
    for hits in index.search(rng.normal(size=(5, 8)).astype(np.float32), k):
        assert len(hits) == min(k, 60) and len({h.key for h in hits}) == len(hits)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
