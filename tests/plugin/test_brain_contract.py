"""The FiftyOne Brain similarity contract, compared with fob's ``sklearn`` backend on the same vectors:
metrics, aggregations, least similar, k beyond the view, thresholds, and options refused up front.

Vectors come in antipodal pairs, so their mean is zero: the sklearn backend centres the indexed vectors
but not query vectors, which changes nothing then.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

from plugin_helpers import unique_name
from revsearch.fiftyone.brain import RevsearchSimilarityIndex

KINDS = ("exact", "kmeans", "milvus")
METRICS = ("euclidean", "cosine")
AGGREGATIONS = ("mean", "post-mean", "post-min", "post-max")
N, DIM = 40, 16
QUERIES = (0, 5, 11)


def embeddings(metric: str) -> np.ndarray:
    """N vectors (unit vectors for cosine) in antipodal pairs."""
    x = np.random.default_rng(len(metric)).normal(size=(N // 2, DIM))
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([x, -x]).astype(np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dataset of N dummy samples with, per metric, a sklearn run and a revsearch run of each kind."""
    ds = fo.Dataset(unique_name("brain-contract"))
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(N)])
    uri = str(tmp_path_factory.mktemp("milvus") / "contract.db")
    options = {"exact": {}, "kmeans": {"n_clusters": 4, "nprobe": 4}, "milvus": {"uri": uri}}
    for metric in METRICS:
        vectors = embeddings(metric)
        fob.compute_similarity(ds, embeddings=vectors, backend="sklearn", metric=metric, brain_key=f"sklearn_{metric}")
        for kind in KINDS:
            key = f"{kind}_{metric}"
            fob.compute_similarity(
                ds,
                embeddings=vectors,
                backend="revsearch",
                index_kind=kind,
                metric=metric,
                brain_key=key,
                **options[kind],
            )
    yield ds, ds.values("id")
    ds.delete()


def assert_as_sklearn(samples, kind: str, metric: str, query, **kwargs) -> list[str]:
    """``sort_by_similarity`` on ``samples`` gives the same ids and distances on the revsearch and sklearn runs."""
    found = []
    for key in (f"{kind}_{metric}", f"sklearn_{metric}"):
        with samples.load_brain_results(key).use_view(samples) as results:
            view = results.sort_by_similarity(query, dist_field="dist", **kwargs)
        found.append((view.values("id"), view.values("dist")))
    (got_ids, got), (ids, dists) = found
    np.testing.assert_allclose(got, dists, rtol=1e-4, atol=1e-6)
    # equal distances (two query samples each other's farthest: post-max) come in either order
    assert sorted(zip(np.round(got, 4), got_ids)) == sorted(zip(np.round(dists, 4), ids))
    return got_ids


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_single_queries_as_sklearn(runs, kind, metric):
    ds, ids = runs
    assert_as_sklearn(ds.exclude(ids[:1]), kind, metric, ids[0], k=10)
    query = embeddings(metric)[3] + 0.1 * np.random.default_rng(3).normal(size=DIM).astype(np.float32)
    assert_as_sklearn(ds, kind, metric, query, k=10)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_aggregations_of_three_query_ids_as_sklearn(runs, kind, metric, aggregation):
    ds, ids = runs
    assert_as_sklearn(ds, kind, metric, [ids[q] for q in QUERIES], k=10, aggregation=aggregation)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_least_similar_as_sklearn(runs, kind, metric):
    ds, ids = runs
    assert_as_sklearn(ds, kind, metric, [ids[q] for q in QUERIES], k=10, reverse=True, aggregation="post-max")
    if kind == "milvus" and metric != "cosine":
        assert not ds.load_brain_results(f"{kind}_{metric}").config.supports_least_similarity
        with pytest.raises(ValueError, match="need metric='cosine' or an exact or kmeans index"):
            ds.sort_by_similarity(ids[0], k=5, reverse=True, brain_key=f"{kind}_{metric}")
        return
    assert ds.load_brain_results(f"{kind}_{metric}").config.supports_least_similarity
    assert len(assert_as_sklearn(ds.exclude(ids[:1]), kind, metric, ids[0], k=10, reverse=True)) == 10


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_k_larger_than_the_view(runs, kind, metric):
    ds, ids = runs
    view = ds.select(ids[12:27])
    assert len(assert_as_sklearn(view, kind, metric, ids[0], k=100)) == 15
    assert len(assert_as_sklearn(view, kind, metric, [ids[q] for q in (0, 5, 30)], k=100, aggregation="post-min")) == 15


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_radius_thresholds_are_in_the_metric_units(runs, kind, metric):
    ds, _ = runs
    x = embeddings(metric).astype(np.float64)
    squared = ((x[:, None] - x[None]) ** 2).sum(-1)[np.triu_indices(N, 1)]
    d = np.unique(np.round(np.sqrt(squared) if metric == "euclidean" else squared / 2, 6))
    thresh = float(d[len(d) // 20] + d[len(d) // 20 + 1]) / 2  # ~5% of the pairs, far from any pair
    pairs = {}
    for key in (f"{kind}_{metric}", f"sklearn_{metric}"):
        index = ds.load_brain_results(key)
        order = index.current_sample_ids
        inds, dists = index._radius_neighbors(thresh=thresh, return_dists=True)
        pairs[key] = {
            (order[i], order[j]): dist
            for i, (row, drow) in enumerate(zip(inds, dists))
            for j, dist in zip(row, drow)
            if i != j
        }
    got, expected = pairs.values()
    assert got.keys() == expected.keys() and got
    np.testing.assert_allclose([got[p] for p in expected], list(expected.values()), rtol=1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"metric": "dotproduct"}, "unsupported metric 'dotproduct'.*sqeuclidean.*euclidean.*cosine"),
        ({"index_kind": "faiss"}, "unknown index kind 'faiss'"),
        ({"patches_field": "ground_truth"}, "patches_field 'ground_truth' must be a label field.*no sample field"),
        ({"patches_field": "filepath"}, "patches_field 'filepath' must be a label field of type Detection, Detections"),
        ({"patches_field": "ground_truth", "copy_pixels": 16}, "copy mode .* cannot index patches_field"),
        ({"index_kind": "milvus", "index_type": "ANNOY"}, "index_type must be one of"),
    ],
)
def test_bad_options_are_refused_before_the_run_is_registered(runs, options, message):
    ds, _ = runs
    before = ds.list_brain_runs()
    with pytest.raises(ValueError, match=message):
        fob.compute_similarity(
            ds,
            embeddings=embeddings("cosine"),
            backend="revsearch",
            brain_key=unique_name("bad").replace("-", "_"),
            **options,
        )
    assert ds.list_brain_runs() == before


def test_unsupported_aggregation_names_the_supported_ones(runs):
    ds, ids = runs
    results = ds.load_brain_results("exact_cosine")
    assert results.config.supported_aggregations == AGGREGATIONS
    with pytest.raises(ValueError, match="'median'.*'mean', 'post-mean', 'post-min', 'post-max'"):
        results.sort_by_similarity(ids[:3], k=3, aggregation="median")


def test_runs_saved_before_metrics_keep_squared_l2(runs):
    """A run saved before ``metric`` was honoured (no ``index_metric`` with its results) searched squared
    L2 whatever metric its config recorded, and still does."""
    ds, ids = runs
    results = ds.load_brain_results("exact_euclidean")
    saved = results.serialize()
    assert saved.pop("index_metric") == "euclidean"
    old = RevsearchSimilarityIndex._from_dict(saved, ds, ds.get_brain_info("exact_euclidean").config, None)
    assert old.config.metric == "sqeuclidean"
    vectors = embeddings("euclidean")
    _, _, dists = old._kneighbors(vectors[1], k=2, return_dists=True)
    expected = np.sort(((vectors - vectors[1]) ** 2).sum(axis=1))[:2]
    np.testing.assert_allclose(dists, expected, rtol=1e-4, atol=1e-4)


def test_compute_similarity_failing_while_adding_leaves_no_run(runs):
    ds, _ = runs
    before = ds.list_brain_runs()
    vectors = embeddings("euclidean")
    bad = vectors.copy()
    bad[0, 0] = np.nan  # K-means refuses it when the index is made, on the first add
    with pytest.raises(ValueError, match="NaN"):
        fob.compute_similarity(ds, embeddings=bad, backend="revsearch", index_kind="kmeans", brain_key="retry")
    assert ds.list_brain_runs() == before
    fob.compute_similarity(ds, embeddings=vectors, backend="revsearch", index_kind="kmeans", brain_key="retry")
    assert ds.load_brain_results("retry", cache=False).total_index_size == N
    ds.delete_brain_run("retry")


@pytest.mark.parametrize("kind", KINDS)
def test_get_embeddings_returns_the_vectors_added(runs, kind, tmp_path):
    """Also when the index stores other vectors: unit vectors (cosine) or the run's PCA reduction."""
    ds, ids = runs
    vectors = embeddings("euclidean") * 3.0
    options = {"uri": str(tmp_path / "e.db")} if kind == "milvus" else {}
    for extra in ({"metric": "cosine"}, {"pca_components": 4}):
        results = fob.compute_similarity(
            ds, embeddings=vectors, backend="revsearch", index_kind=kind, **extra, **options
        )
        got, got_ids, _ = results.get_embeddings(sample_ids=ids[3:6])
        np.testing.assert_allclose(got, vectors[3:6], rtol=1e-5, atol=1e-5)
        assert got_ids.tolist() == ids[3:6]
        assert results.reduced_embeddings(ids[3:4]).shape[1] == (4 if "pca_components" in extra else DIM)
        results.cleanup()


@pytest.mark.parametrize("kind", KINDS)
def test_deleted_samples_take_no_result_slots_and_k_none_sorts_the_view(runs, kind, tmp_path):
    ds = fo.Dataset(unique_name("deleted"))
    try:
        ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(N)])
        vectors = embeddings("euclidean")
        options = {"uri": str(tmp_path / "d.db")} if kind == "milvus" else {}
        results = fob.compute_similarity(
            ds, embeddings=vectors, backend="revsearch", index_kind=kind, brain_key="d", **options
        )
        ids = ds.values("id")
        nearest = results.sort_by_similarity(ids[0], k=10).values("id")
        ds.delete_samples(nearest[1:6])
        results = ds.load_brain_results("d", cache=False)
        view = results.sort_by_similarity(ids[0], k=10)
        assert len(view) == 10 and not set(view.values("id")) & set(nearest[1:6])
        assert len(results.sort_by_similarity(ids[0])) == N - 5
    finally:
        ds.delete()


@pytest.mark.slow
def test_a_compute_killed_while_filling_milvus_leaves_nothing_a_retry_reuses(runs, tmp_path):
    """Killed after its vectors reached the (default-named) collection but before the run was saved:
    the retry under the same key indexes its own vectors, not the leftovers."""
    import subprocess
    import sys

    from plugin_helpers import subprocess_env

    ds, _ = runs
    uri = str(tmp_path / "killed.db")
    script = (
        "import fiftyone as fo, fiftyone.brain as fob, numpy as np, revsearch.fiftyone.brain\n"
        f"ds = fo.load_dataset({ds.name!r})\n"
        "v = np.ones((len(ds), 16), np.float32)\n"
        "fob.compute_similarity(ds, embeddings=v, backend='revsearch', index_kind='milvus',"
        f" uri={uri!r}, brain_key='k')\n"
    )
    env = {**subprocess_env(), "REVSEARCH_CRASH_AT": "2"}  # 1: collection created, 2: vectors upserted
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert "k" not in ds.list_brain_runs()
    half = ds.limit(N // 2)  # the retry indexes other samples: none of the leftovers may stay
    vectors = embeddings("euclidean")[: N // 2]
    results = fob.compute_similarity(
        half, embeddings=vectors, backend="revsearch", index_kind="milvus", uri=uri, brain_key="k"
    )
    assert sorted(results.sample_ids.tolist()) == sorted(half.values("id"))
    got, _, _ = results.get_embeddings(sample_ids=half.values("id")[:4])
    np.testing.assert_allclose(got, vectors[:4], rtol=1e-5)
    ds.delete_brain_run("k")
