"""The FiftyOne Brain contract at 25,000 samples: exact view queries, least similar, near-duplicates.

Synthetic clustered 64-d unit vectors are indexed with ``fob.compute_similarity(..., embeddings=...,
backend="revsearch")`` in every index kind (real FiftyOne + MongoDB, real Milvus Lite). Each result
is compared with an exact numpy search of the same vectors.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

import revsearch.fiftyone.brain  # noqa: F401  (registers backend="revsearch")
from plugin_helpers import unique_name

KINDS = ("kmeans", "milvus", "pixel")
N_SAMPLES, DIM, N_CENTRES = 25_000, 64, 250
#: Planted near-duplicates: (original row, copy row) pairs; copies differ by noise far below
#: the distance between distinct samples.
N_PAIRS, COPY_NOISE, DUP_THRESH = 40, 1e-3, 0.01


def clustered_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``N_CENTRES`` random centres, the last ``N_PAIRS`` rows copies of others."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CENTRES, DIM))
    x = centres[rng.integers(0, N_CENTRES, n)] + 0.35 * rng.normal(size=(n, DIM))
    x[n - N_PAIRS :] = x[:N_PAIRS] + COPY_NOISE * rng.normal(size=(N_PAIRS, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A dataset of N_SAMPLES dummy samples, its vectors, and one revsearch index of each kind."""
    vectors = clustered_vectors(N_SAMPLES)
    ds = fo.Dataset(unique_name("brain-scale"))
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(N_SAMPLES)])
    uri = str(tmp_path_factory.mktemp("milvus") / "scale.db")
    for kind in KINDS:
        options = {"uri": uri} if kind == "milvus" else {}
        fob.compute_similarity(ds, embeddings=vectors, backend="revsearch", index_kind=kind, brain_key=kind, **options)
    yield ds, ds.values("id"), vectors
    ds.delete()


def exact_ranking(vectors: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int, reverse: bool = False):
    """Rows of the ``k`` nearest (``reverse``: farthest) vectors among ``rows``."""
    dist = ((vectors[rows].astype(np.float64) - query.astype(np.float64)) ** 2).sum(axis=1)
    order = np.argsort(-dist if reverse else dist, kind="stable")[:k]
    return rows[order]


def view_rows(vectors: np.ndarray, query: np.ndarray, size: int, shape: str) -> np.ndarray:
    """A view of ``size`` samples: random, or the samples least similar to the query (the case where
    filtering a global top-k leaves nothing)."""
    if shape == "random":
        return np.sort(np.random.default_rng(size).choice(len(vectors), size, replace=False))
    return np.sort(exact_ranking(vectors, query, np.arange(len(vectors)), size, reverse=True))


@pytest.mark.parametrize("shape", ["random", "far"])
@pytest.mark.parametrize("size", [50, 5_000])
@pytest.mark.parametrize("kind", KINDS)
def test_view_query_equals_exact_top_k_of_the_view(indexed, kind, size, shape):
    ds, ids, vectors = indexed
    query_row = 123
    rows = view_rows(vectors, vectors[query_row], size, shape)
    view = ds.select([ids[r] for r in rows])
    got = view.sort_by_similarity(ids[query_row], k=10, brain_key=kind).values("id")
    assert got == [ids[r] for r in exact_ranking(vectors, vectors[query_row], rows, 10)]


@pytest.mark.parametrize("kind", ["kmeans", "pixel"])
def test_least_similar_equals_exact_farthest(indexed, kind):
    ds, ids, vectors = indexed
    results = ds.load_brain_results(kind)
    assert results.config.supports_least_similarity
    got = ds.sort_by_similarity(vectors[7], k=10, reverse=True, brain_key=kind).values("id")
    assert got == [ids[r] for r in exact_ranking(vectors, vectors[7], np.arange(N_SAMPLES), 10, reverse=True)]
    rows = view_rows(vectors, vectors[7], 5_000, "random")
    got = ds.select([ids[r] for r in rows]).sort_by_similarity(ids[7], k=10, reverse=True, brain_key=kind)
    assert got.values("id") == [ids[r] for r in exact_ranking(vectors, vectors[7], rows, 10, reverse=True)]


def test_milvus_says_why_it_has_no_least_similar(indexed):
    ds, ids, _ = indexed
    assert not ds.load_brain_results("milvus").config.supports_least_similarity
    with pytest.raises(ValueError, match="nearest neighbours only"):
        ds.sort_by_similarity(ids[0], k=5, reverse=True, brain_key="milvus")


def planted_copies(ids: list[str]) -> set[str]:
    return {ids[N_SAMPLES - N_PAIRS + i] for i in range(N_PAIRS)}


@pytest.mark.parametrize("kind", KINDS)
def test_compute_near_duplicates_finds_the_planted_copies(indexed, kind):
    ds, ids, _ = indexed
    index = fob.compute_near_duplicates(ds, similarity_index=kind, threshold=DUP_THRESH)
    assert set(index.duplicate_ids) == planted_copies(ids)
    pairs = {original: [copy for copy, _ in copies] for original, copies in index.neighbors_map.items()}
    assert pairs == {ids[i]: [ids[N_SAMPLES - N_PAIRS + i]] for i in range(N_PAIRS)}
    dup_view = index.duplicates_view(type_field="dup_type")
    assert len(dup_view) == 2 * N_PAIRS and dup_view.count_values("dup_type") == {
        "nearest": N_PAIRS,
        "duplicate": N_PAIRS,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_radius_neighbors_in_a_view_equal_exact_range_search(indexed, kind):
    ds, ids, vectors = indexed
    rows = view_rows(vectors, vectors[0], 5_000, "random")
    index = ds.load_brain_results(kind)
    thresh = 0.3  # a radius that holds several samples of the same cluster
    queries = [ids[r] for r in rows[:20]]
    with index.use_view(ds.select([ids[r] for r in rows])):
        got, _, dists = index._radius_neighbors(query=queries, thresh=thresh, return_dists=True)
    for query_row, got_ids, got_dists in zip(rows[:20], got, dists):
        dist = ((vectors[rows].astype(np.float64) - vectors[query_row]) ** 2).sum(axis=1)
        within = rows[dist <= thresh]
        assert set(got_ids) == {ids[r] for r in within}
        assert got_dists == sorted(got_dists)


@pytest.mark.parametrize("kind", ["kmeans", "pixel"])
def test_find_unique_and_duplicates_within_a_view(indexed, kind):
    ds, ids, _ = indexed
    index = ds.load_brain_results(kind)
    pairs_in_view = 10
    rows = list(range(pairs_in_view)) + list(range(N_SAMPLES - N_PAIRS, N_SAMPLES)) + list(range(1000, 1400))
    with index.use_view(ds.select([ids[r] for r in rows])):
        index.find_duplicates(thresh=DUP_THRESH)
        assert set(index.duplicate_ids) == {ids[N_SAMPLES - N_PAIRS + i] for i in range(pairs_in_view)}
        index.find_unique(300)
        assert len(index.unique_ids) == 300


def test_milvus_counts_and_queries_without_reading_every_key(indexed):
    """The size comes from Milvus's entity count; a query by sample id fetches only that vector."""
    ds, ids, _ = indexed
    results = ds.load_brain_results("milvus", cache=False)
    assert results.total_index_size == N_SAMPLES
    assert results.sort_by_similarity(ids[3], k=5).values("id")[0] == ids[3]
    assert results._ids is None  # the cached list of every key was never built
