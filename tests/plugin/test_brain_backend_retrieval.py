"""Retrieval options of the brain backend on real Caltech images: the copy mode (CNN + pixel fusion)
and alpha-DBA, kept consistent through add / remove / sync and reloaded with the run."""

from __future__ import annotations

import cv2
import fiftyone as fo
import numpy as np
import pytest

from plugin_helpers import MODEL, make_dataset
from revsearch import Embedder
from revsearch.fiftyone import tools
from revsearch.retrieval.dba import DBAGraph


@pytest.fixture(scope="module")
def dataset(caltech_files):
    """The 24 images with their CNN embeddings in ``emb``."""
    ds = make_dataset("brain-retrieval", caltech_files)
    tools.compute_embeddings(ds, "emb", Embedder(**MODEL, batch_size=8))
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def edited(caltech_files, tmp_path_factory) -> dict[int, list[str]]:
    """Strongly edited copies (0.2x resize, heavy blur) of some images, by row."""
    folder = tmp_path_factory.mktemp("edited")
    out = {}
    for row in (0, 12, 15, 21):
        image = cv2.imread(caltech_files[row])
        small = cv2.resize(image, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"small{row}.png"), small)
        cv2.imwrite(str(folder / f"blur{row}.jpg"), cv2.GaussianBlur(image, (0, 0), 8))
        out[row] = [str(folder / f"small{row}.png"), str(folder / f"blur{row}.jpg")]
    return out


@pytest.fixture(scope="module")
def copy_index(dataset):
    """An exact index of ``emb`` keeping 16x16 thumbnails."""
    return tools.build_index(dataset, "copy", "exact", embeddings_field="emb", copy_pixels=16)[0]


def thumbnail_keys(results) -> set[str]:
    return set(results._extras.pixels.keys())


def test_copy_mode_finds_edited_copies_where_similar_mode_may_not(dataset, edited, copy_index):
    results = copy_index
    ids = dataset.values("id")
    similar_first = []
    for row, copies in edited.items():
        for path in copies:
            view = tools.query_view(results, dataset, path, 3, "d_copy", mode="copy")
            assert view.values("id")[0] == ids[row], path
            dists = view.values("d_copy")
            assert dists == sorted(dists) and dists[0] < 0.2 < dists[1]
            similar_first.append(tools.query_view(results, dataset, path, 3).values("id")[0] == ids[row])
    assert not all(similar_first)  # the CNN alone misses some of these copies
    stored = dict(zip(ids, dataset.values("d_copy")))
    assert sum(d is not None for d in stored.values()) == 3  # distances of earlier searches cleared
    by_id = tools.query_view(results, dataset, [ids[5]], 2, mode="copy")
    assert by_id.values("id")[0] == ids[5]
    with pytest.raises(ValueError, match="one query image"):
        tools.query_view(results, dataset, ids[:2], 2, mode="copy")


def test_copy_mode_searches_only_the_view(dataset, edited, copy_index):
    view = dataset.match(fo.ViewField("ground_truth.label") != "airplanes")  # the query shows an airplane
    got = tools.query_view(copy_index, view, edited[0][0], 5, mode="copy").values("id")
    assert len(got) == 5 and set(got) <= set(view.values("id"))


def test_copy_mode_without_thumbnails_says_how_to_rebuild(dataset, edited):
    results, _ = tools.build_index(dataset, "plain", "exact", embeddings_field="emb")
    assert results.config.copy_pixels == 0 and not results.has_copy_mode
    with pytest.raises(ValueError, match=r"keeps no thumbnails .*rebuild it with copy mode on"):
        tools.query_view(results, dataset, edited[0][0], 3, mode="copy")


@pytest.mark.parametrize("kind", ["milvus", "kmeans"])
def test_copy_mode_stays_consistent_through_updates_and_reload(caltech_files, edited, tmp_path, kind):
    ds = make_dataset("brain-copy-upd", caltech_files)
    try:
        extra = {"uri": str(tmp_path / "c.db")} if kind == "milvus" else {"n_clusters": 3, "nprobe": 3}
        results, _ = tools.build_index(
            ds, "c", kind, extractor=Embedder(**MODEL, batch_size=8), copy_pixels=16, **extra
        )
        ids = ds.values("id")
        assert thumbnail_keys(results) == set(ids)
        vectors, got, _ = results.get_embeddings(ids[:3])
        results.remove_from_index(ids[:3])
        assert thumbnail_keys(results) == set(ids[3:])
        assert ids[0] not in [h.key for h in results.copy_search(edited[0][0], 5)]
        results.add_to_index(vectors, got)
        results.save()

        fresh = ds.load_brain_results("c", cache=False)
        assert fresh is not results and thumbnail_keys(fresh) == set(ids)
        hits, before = fresh.copy_search(edited[0][0], 3), results.copy_search(edited[0][0], 3)
        assert hits[0].key == ids[0] and [h.key for h in hits] == [h.key for h in before]
        np.testing.assert_allclose([h.distance for h in hits], [h.distance for h in before], rtol=1e-5)

        ds.delete_samples(ids[12:14])
        assert tools.sync_index(fresh)["removed"] == 2
        again = ds.load_brain_results("c", cache=False)
        assert thumbnail_keys(again) == set(ids) - set(ids[12:14]) == set(again.sample_ids.tolist())
        assert again.copy_search(edited[15][1], 1)[0].key == ids[15]
    finally:
        ds.delete()


def dba_reference(ids: list[str], vectors: np.ndarray, n: int, alpha: float) -> dict[str, np.ndarray]:
    """Augmented vectors of a DBA graph built at once over ``vectors``."""
    graph = DBAGraph(n, alpha, vectors.shape[1])
    graph.update(ids, vectors)
    return dict(zip(ids, graph.augmented(ids)))


@pytest.mark.parametrize("kind", ["exact", "milvus"])
def test_dba_equals_a_rebuild_through_updates_and_reload(dataset, tmp_path, kind):
    extra = {"uri": str(tmp_path / "d.db")} if kind == "milvus" else {}
    key = f"dba_{kind}"
    results, _ = tools.build_index(dataset, key, kind, embeddings_field="emb", dba_n=2, dba_alpha=3.0, **extra)
    ids, vectors = dataset.values("id"), np.stack(dataset.values("emb")).astype(np.float32)
    results.remove_from_index(ids[:4])
    changed = vectors[[20, 21]]  # two samples re-added with other vectors
    results.add_to_index(np.concatenate([vectors[[1, 2]], changed]), [ids[1], ids[2], ids[6], ids[7]])
    results.save()
    final = {i: v for i, v in zip(ids, vectors) if i not in (ids[0], ids[3])}
    final[ids[6]], final[ids[7]] = changed
    want = dba_reference(list(final), np.stack(list(final.values())), 2, 3.0)

    fresh = dataset.load_brain_results(key, cache=False)
    for index in (results, fresh):
        assert set(index.sample_ids.tolist()) == set(want)
        stored = index._handle.vectors(list(want))
        np.testing.assert_allclose(stored, np.stack(list(want.values())), atol=1e-5)
        originals, got, _ = index.get_embeddings(list(final))
        assert got.tolist() == list(final)
        np.testing.assert_allclose(originals, np.stack(list(final.values())), atol=1e-6)
    assert not np.allclose(fresh._handle.vectors([ids[9]]), vectors[9], atol=1e-3)  # augmented in the store
    view = dataset.sort_by_similarity(ids[9], k=4, brain_key=key, dist_field="d_dba")
    dist = ((np.stack(list(want.values())) - vectors[9]) ** 2).sum(axis=1)
    assert view.values("id") == [list(want)[i] for i in np.argsort(dist)[:4]]
    dataset.delete_brain_run(key)


def test_copy_mode_with_dba_ranks_by_the_original_vectors(dataset, edited):
    results, _ = tools.build_index(dataset, "dba_copy", "exact", embeddings_field="emb", dba_n=3, copy_pixels=16)
    ids = dataset.values("id")
    for row, copies in edited.items():
        assert results.copy_search(copies[1], 2)[0].key == ids[row]
    fresh = dataset.load_brain_results("dba_copy", cache=False)
    assert [h.key for h in fresh.copy_search(edited[12][0], 3)] == [
        h.key for h in results.copy_search(edited[12][0], 3)
    ]
