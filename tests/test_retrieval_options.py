"""alpha-QE, alpha-DBA (incremental), reciprocal-rank fusion and multi-scale GeM: on real descriptors
of Caltech-101 images (MobileNetV2, real weights) where the result depends on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import SUBSET_CLASSES, SUBSET_PER_CLASS
from revsearch import ExactIndex
from revsearch.array_codec import encode_arrays
from revsearch.features.pca import l2_normalize
from revsearch.index.hits import Hit
from revsearch.retrieval.dba import DBAGraph, augment, nearest_others
from revsearch.retrieval.fusion import fuse_hits, ratio_fusion, reciprocal_rank_fusion
from revsearch.retrieval.options import IndexExtras, RetrievalOptions
from revsearch.retrieval.query_expansion import expand, expanded_search


@pytest.fixture(scope="module")
def subset_vectors(pretrained_mobilenet, subset_paths) -> np.ndarray:
    return pretrained_mobilenet.embed_paths(subset_paths, progress=False).vectors


def _labels() -> np.ndarray:
    return np.repeat(np.arange(len(SUBSET_CLASSES)), SUBSET_PER_CLASS)


# ---- alpha-QE ----------------------------------------------------------------------------------
def test_expand_is_the_weighted_mean_of_query_and_neighbours():
    q = np.array([[1.0, 0.0]], np.float32)
    x = l2_normalize(np.array([[1.0, 1.0], [-1.0, 0.2]], np.float32))[None]
    sim = float(x[0, 0] @ q[0])
    want = q[0] + sim**3 * x[0, 0]  # the second neighbour has negative similarity: no weight
    np.testing.assert_allclose(expand(q, x, 3.0)[0], want / np.linalg.norm(want), rtol=1e-6)
    np.testing.assert_allclose(expand(q, x[:, :0], 3.0), q)


def test_expanded_search_on_real_descriptors(subset_vectors):
    index = ExactIndex(subset_vectors.shape[1])
    keys = [str(i) for i in range(len(subset_vectors))]
    index.add(keys, subset_vectors)

    def fetch(ks):
        return index.store.vectors[index.store.rows_of(ks)]

    plain = index.search(subset_vectors, 6)
    assert expanded_search(index.search, fetch, subset_vectors, 6, 0, 3.0) == plain
    expanded = expanded_search(index.search, fetch, subset_vectors, 6, 2, 3.0)
    labels = _labels()

    def precision(results):
        return np.mean([labels[int(h.key)] == labels[i] for i, hits in enumerate(results) for h in hits])

    assert all(len(hits) == 6 for hits in expanded)
    assert precision(expanded) >= precision(plain) - 0.05  # same-class neighbours stay found
    assert precision(expanded) > 0.8


# ---- alpha-DBA ---------------------------------------------------------------------------------
def test_nearest_others_excludes_self_and_sorts(subset_vectors):
    rows = np.arange(len(subset_vectors))
    nb = nearest_others(subset_vectors, subset_vectors, 3, rows)
    assert nb.shape == (len(rows), 3) and not (nb == rows[:, None]).any()
    sims = np.take_along_axis(subset_vectors @ subset_vectors.T, nb, axis=1)
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    np.fill_diagonal(full := subset_vectors @ subset_vectors.T, -np.inf)
    np.testing.assert_allclose(sims[:, 0], full.max(axis=1), rtol=1e-6)


def test_augmented_vectors_stay_in_their_class(subset_vectors):
    rows = np.arange(len(subset_vectors))
    aug = augment(subset_vectors, nearest_others(subset_vectors, subset_vectors, 2, rows), rows, 3.0)
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 1.0, rtol=1e-5)
    labels = _labels()
    own_class = np.array([aug[i] @ subset_vectors[labels == labels[i]].mean(0) for i in rows])
    other = np.array([aug[i] @ subset_vectors[labels != labels[i]].mean(0) for i in rows])
    assert (own_class > other).all()


def _from_scratch(keys, vectors, n, alpha):
    graph = DBAGraph(n, alpha, vectors.shape[1])
    graph.update(keys, vectors)
    return dict(zip(graph.keys, graph.augmented()))


@pytest.mark.parametrize("n", [1, 3])
def test_incremental_updates_equal_a_rebuild(subset_vectors, n):
    """After any sequence of adds, replacements and removals the augmented vectors are those of a
    graph built from scratch, and exactly the changed ones are reported."""
    rng = np.random.default_rng(n)
    keys = [f"k{i}" for i in range(len(subset_vectors))]
    current = {}
    graph = DBAGraph(n, 3.0, subset_vectors.shape[1])
    before = {}
    for step in range(8):
        add = list(rng.choice(keys, size=int(rng.integers(1, 5)), replace=False))
        remove = [k for k in current if rng.random() < 0.15 and k not in add]
        vectors = subset_vectors[[keys.index(k) for k in add]]
        if step % 3 == 2:  # a changed file: the same key with another image's vector
            vectors = subset_vectors[rng.integers(0, len(keys), len(add))]
        changed = set(graph.update(add, vectors, remove))
        for k in remove:
            current.pop(k)
        current.update(zip(add, vectors))
        want = _from_scratch(list(current), np.array(list(current.values())), n, 3.0)
        got = dict(zip(graph.keys, graph.augmented()))
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=1e-5)
        moved = {k for k in want if k not in before or not np.allclose(before[k], want[k], atol=1e-6)}
        assert moved <= changed
        before = want


def test_dba_state_round_trips(subset_vectors):
    graph = DBAGraph(2, 3.0, subset_vectors.shape[1])
    keys = [str(i) for i in range(len(subset_vectors))]
    graph.update(keys, subset_vectors)
    again = DBAGraph.from_state(graph.keys, graph.state())
    np.testing.assert_array_equal(again.augmented(), graph.augmented())
    assert (again.n, again.alpha) == (2, 3.0)
    with pytest.raises(ValueError, match="n >= 1"):
        DBAGraph(0, 3.0, 4)


def test_inline_state_round_trips_and_an_empty_graph_takes_the_first_dimension(subset_vectors, subset_paths):
    """The state a brain run stores (DBA graph, thumbnails as bytes), through JSON, gives back the same
    extras."""
    options = RetrievalOptions(dba_n=2, copy_pixels=8)
    extras = IndexExtras(options, 0)  # dimension not known yet
    keys = [str(p) for p in subset_paths]
    changed, _ = extras.store_vectors([], keys, subset_vectors)
    assert changed == keys and extras.dba.vectors.shape == subset_vectors.shape
    extras.update_pixels([], {k: k for k in keys[:10]})
    stored = json.loads(json.dumps(encode_arrays(extras.arrays_state())))
    again = IndexExtras.from_state(stored, options, subset_vectors.shape[1])
    np.testing.assert_array_equal(again.dba.augmented(), extras.dba.augmented())
    np.testing.assert_array_equal(again.dba.originals(keys[3:5]), subset_vectors[3:5])
    assert again.pixels.keys() == keys[:10]
    np.testing.assert_array_equal(again.pixels.vectors(keys[:10]), extras.pixels.vectors(keys[:10]))
    off = IndexExtras.from_state(None, RetrievalOptions.off(), 4)
    assert off.dba is None and off.pixels is None and off.arrays_state() == {}


# ---- reciprocal-rank fusion --------------------------------------------------------------------
def test_rrf_prefers_items_found_by_both_rankings():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d", "a"]], k=60)
    assert [key for key, _ in fused][:2] == ["a", "c"]
    assert {key for key, _ in fused} == {"a", "b", "c", "d"}
    assert reciprocal_rank_fusion([["a", "b"], ["b", "a"]], k=1, weights=[2, 1])[0][0] == "a"
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([["a"]], weights=[1, 2])


def test_fuse_hits_scores_the_best_zero():
    hits = fuse_hits([[Hit("a", 0.1), Hit("b", 0.2)], [Hit("b", 5.0), Hit("c", 9.0)]], top=2)
    assert [h.key for h in hits] == ["b", "a"] and hits[0].distance == 0.0 and 0 < hits[1].distance < 1
    assert fuse_hits([[], []], top=3) == []


def test_ratio_fusion_trusts_the_list_that_is_sure():
    cnn = [Hit("a", 0.50), Hit("b", 0.52), Hit("c", 0.55), Hit("d", 0.56), Hit("e", 0.60)]
    pixel = [Hit("c", 10.0), Hit("x", 900.0), Hit("y", 950.0), Hit("z", 990.0), Hit("w", 1000.0)]
    fused = ratio_fusion([cnn, pixel], top=3, ref_rank=5)
    assert fused[0] == Hit("c", 0.01)  # 10 / 1000: far closer than the thumbnail ranking's 5th
    assert [h.key for h in fused[1:]] == ["a", "b"]  # then by the CNN's 0.5 / 0.6, 0.52 / 0.6
    weighted = ratio_fusion([cnn, pixel], top=1, ref_rank=5, weights=[1.0, 100.0])
    assert weighted[0].key == "a"  # a heavy weight makes the thumbnails' hit lose
    assert ratio_fusion([[], []], top=2) == []
    with pytest.raises(ValueError, match="weights"):
        ratio_fusion([cnn], top=1, weights=[1, 2])


# ---- multi-scale GeM ---------------------------------------------------------------------------
def test_multiscale_single_scale_equals_the_embedder(pretrained_mobilenet, subset_paths):
    from revsearch.features.multiscale import MultiScaleEmbedder

    one = MultiScaleEmbedder(pretrained_mobilenet.config, scales=(1.0,))
    np.testing.assert_allclose(
        one.embed_paths(subset_paths[:4], progress=False).vectors,
        pretrained_mobilenet.embed_paths(subset_paths[:4], progress=False).vectors,
        atol=1e-5,
    )


def test_multiscale_is_the_normalised_mean_of_scales(pretrained_mobilenet, subset_paths):
    from revsearch.features.multiscale import DEFAULT_SCALES, MultiScaleEmbedder

    ms = MultiScaleEmbedder(pretrained_mobilenet.config)
    assert ms.sizes == [224, 158, 112] and ms.describe()["scales"] == list(DEFAULT_SCALES)
    batch = np.stack([ms.prepare(np.full((100, 150, 3), 90, np.uint8)), ms.prepare(np.zeros((50, 50, 3), np.uint8))])
    per = ms.per_scale(batch)
    assert per.shape == (3, 2, ms.dim)
    np.testing.assert_allclose(ms.forward(batch), l2_normalize(per.mean(0)), rtol=1e-6)
    vectors = ms.embed_paths(subset_paths, progress=False).vectors
    labels = _labels()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    assert (labels[sims.argmax(1)] == labels).mean() > 0.9
    with pytest.raises(ValueError, match="scales"):
        MultiScaleEmbedder(pretrained_mobilenet.config, scales=())
