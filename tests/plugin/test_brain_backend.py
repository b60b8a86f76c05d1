"""The ``revsearch`` FiftyOne Brain similarity backend on real Caltech images, real Milvus Lite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

from plugin_helpers import MODEL, make_dataset, subprocess_env
from revsearch import Embedder, MilvusIndex, PixelFeatures
from revsearch.errors import IndexNotFoundError
from revsearch.fiftyone import tools
from revsearch.fiftyone.brain import RevsearchSimilarityConfig

#: Brain keys of the module dataset: index kinds, over CNN features unless they start with "pixel".
KINDS = ("milvus", "kmeans", "pixel", "exact", "pixel_milvus")


@pytest.fixture(scope="module")
def dataset(caltech_files, tmp_path_factory):
    """A dataset with CNN embeddings and one index of each kind (kmeans probes all clusters)."""
    ds = make_dataset("brain", caltech_files)
    tools.compute_embeddings(ds, "emb", Embedder(**MODEL, batch_size=8))
    uri = str(tmp_path_factory.mktemp("milvus") / "brain.db")
    tools.build_index(ds, "milvus", "milvus", embeddings_field="emb", uri=uri)
    tools.build_index(ds, "kmeans", "kmeans", embeddings_field="emb", n_clusters=4, nprobe=4)
    tools.build_index(ds, "pixel", "pixel")
    tools.build_index(ds, "exact", "exact", embeddings_field="emb")  # CNN features, exact index
    tools.build_index(ds, "pixel_milvus", "milvus", extractor=PixelFeatures(), uri=uri)  # pixel features, Milvus
    yield ds
    ds.delete()


def reference_vectors(ds: fo.Dataset, kind: str) -> tuple[list[str], np.ndarray]:
    """Vectors computed independently of the index: the embeddings field, or pixel features."""
    if kind.startswith("pixel"):
        batch = PixelFeatures().embed_paths(ds.values("filepath"), progress=False)
        return ds.values("id"), batch.vectors
    return ds.values("id"), np.stack(ds.values("emb"))


def exact_ranking(ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    dist = ((vectors.astype(np.float64) - query.astype(np.float64)) ** 2).sum(axis=1)
    order = np.argsort(dist, kind="stable")[:k]
    return [ids[i] for i in order], dist[order]


@pytest.mark.parametrize("kind", KINDS)
def test_sort_by_sample_id_matches_exact_search(dataset, kind):
    ids, vectors = reference_vectors(dataset, kind)
    for row in (0, 7, 13, 22):
        view = dataset.sort_by_similarity(ids[row], k=10, brain_key=kind, dist_field="dist")
        expected_ids, expected_dists = exact_ranking(ids, vectors, vectors[row], 10)
        assert view.values("id") == expected_ids
        np.testing.assert_allclose(view.values("dist"), expected_dists, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["milvus", "kmeans"])
def test_sort_by_query_vectors(dataset, kind):
    ids, vectors = reference_vectors(dataset, kind)
    view = dataset.sort_by_similarity(vectors[3], k=5, brain_key=kind)
    assert view.values("id") == exact_ranking(ids, vectors, vectors[3], 5)[0]
    # several vectors are averaged ("mean" aggregation)
    mean = vectors[[1, 2, 8]].mean(axis=0)  # three, so the mean is not equidistant from two of them
    view = dataset.sort_by_similarity(vectors[[1, 2, 8]], k=5, brain_key=kind)
    assert view.values("id") == exact_ranking(ids, vectors, mean, 5)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_sort_within_a_view_returns_only_view_samples(dataset, kind):
    ids, vectors = reference_vectors(dataset, kind)
    view = dataset.match(fo.ViewField("ground_truth.label").is_in(["Faces", "watch"]))
    allowed = set(view.values("id"))
    keep = [i for i, _id in enumerate(ids) if _id in allowed]
    result = view.sort_by_similarity(ids[0], k=6, brain_key=kind)  # an airplane query, not in the view
    expected = exact_ranking([ids[i] for i in keep], vectors[keep], vectors[0], 6)[0]
    assert result.values("id") == expected


@pytest.mark.parametrize("kind", KINDS)
def test_image_query_finds_the_indexed_image(dataset, kind, caltech_files):
    results = dataset.load_brain_results(kind)
    hits = results.search(results.embed_query(caltech_files[9])[None, :], 3)[0]
    assert hits[0].key == dataset.values("id")[9]
    assert hits[0].distance == pytest.approx(0.0, abs=1e-3 if not kind.startswith("pixel") else 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_reload_in_a_fresh_process(dataset, kind):
    """A new Python process re-opens the index from the brain run's stored config."""
    query = dataset.values("id")[5]
    expected = dataset.sort_by_similarity(query, k=8, brain_key=kind).values("id")
    code = (
        "import fiftyone as fo, json, sys\n"
        f"ds = fo.load_dataset({dataset.name!r})\n"
        f"view = ds.sort_by_similarity({query!r}, k=8, brain_key={kind!r})\n"
        "print(json.dumps({'ids': view.values('id'), 'cls': type(ds.load_brain_results("
        f"{kind!r})).__name__}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"ids": expected, "cls": "RevsearchSimilarityIndex"}


def test_add_remove_and_staleness(caltech_files, tmp_path):
    ds = make_dataset("brain-update", caltech_files[:12])
    try:
        results, _ = tools.build_index(ds, "idx", "milvus", extractor=PixelFeatures(8), uri=str(tmp_path / "u.db"))
        ids = ds.values("id")
        vectors, got_ids, _ = results.get_embeddings(ids[:3])
        results.remove_from_index(ids[:3])
        assert results.total_index_size == 9
        assert not set(ids[:3]) & set(ds.sort_by_similarity(ids[5], k=12, brain_key="idx").values("id"))
        results.add_to_index(vectors, got_ids)
        assert results.total_index_size == 12
        assert ds.sort_by_similarity(ids[5], k=12, brain_key="idx").values("id")[0] == ids[5]

        ds.delete_samples(ids[:2])
        new = fo.Sample(filepath=caltech_files[20])
        ds.add_sample(new)
        status = tools.index_status(ds.load_brain_results("idx"))
        assert status["stale"] and status["deleted"] == sorted(ids[:2]) and status["not_indexed"] == [new.id]

        report = tools.sync_index(ds.load_brain_results("idx"))
        assert (report["added"], report["removed"]) == (1, 2)
        fresh = ds.load_brain_results("idx", cache=False)
        assert not tools.index_status(fresh)["stale"]
        assert ds.sort_by_similarity(new.id, k=1, brain_key="idx").values("id") == [new.id]
    finally:
        ds.delete()


def test_changed_files_are_detected_and_reembedded(caltech_files, tmp_path):
    """A sample whose file is replaced after indexing is reported as changed and re-embedded by sync."""
    copies = []
    for i, src in enumerate(caltech_files[:8]):
        dst = tmp_path / f"img{i}.jpg"
        shutil.copy(src, dst)
        copies.append(str(dst))
    ds = make_dataset("brain-changed", copies)
    try:
        tools.build_index(ds, "idx", "kmeans", extractor=PixelFeatures(8), n_clusters=2)
        ids = ds.values("id")
        assert tools.index_status(ds.load_brain_results("idx", cache=False))["changed"] == []
        shutil.copy(caltech_files[20], copies[0])  # the file of sample 0 now shows another image
        os.utime(copies[0], (1, 1))
        status = tools.index_status(ds.load_brain_results("idx", cache=False))
        assert status["changed"] == [ids[0]] and status["stale"]
        report = tools.sync_index(ds.load_brain_results("idx", cache=False))
        assert (report["added"], report["updated"], report["removed"]) == (0, 1, 0)
        fresh = ds.load_brain_results("idx", cache=False)
        assert not tools.index_status(fresh)["stale"]
        vectors = PixelFeatures(8).embed_paths([caltech_files[20]], progress=False).vectors
        assert ds.sort_by_similarity(vectors[0], k=1, brain_key="idx").values("id") == [ids[0]]
        assert fresh.total_index_size == 8
    finally:
        ds.delete()


def test_compute_similarity_by_backend_name_with_a_model(caltech_files, tmp_path):
    """The standard fob.compute_similarity entry point, backend chosen by its registered name."""
    ds = make_dataset("brain-fob", caltech_files[:8])
    try:
        model = tools.ExtractorModel(PixelFeatures(8))
        results = fob.compute_similarity(
            ds, model=model, backend="revsearch", index_kind="pixel", brain_key="px", batch_size=4
        )
        assert isinstance(results.config, RevsearchSimilarityConfig)
        assert results.total_index_size == 8
        first = ds.values("id")[2]
        assert ds.sort_by_similarity(first, k=3, brain_key="px").values("id")[0] == first
    finally:
        ds.delete()


def test_deleting_the_brain_run_drops_the_milvus_collection(caltech_files, tmp_path):
    ds = make_dataset("brain-del", caltech_files[:4])
    uri = str(tmp_path / "d.db")
    try:
        results, _ = tools.build_index(ds, "gone", "milvus", extractor=PixelFeatures(4), uri=uri)
        collection = results.config.collection_name
        ds.delete_brain_run("gone")
        assert "gone" not in ds.list_brain_runs()
        with pytest.raises(IndexNotFoundError):
            MilvusIndex(48, collection, uri=uri, create=False)
    finally:
        ds.delete()


def test_features_and_index_kind_are_recorded_independently(dataset):
    infos = {k: dataset.load_brain_results(k).config for k in ("exact", "pixel_milvus", "pixel")}
    assert [(c.index_kind, c.extractor["type"]) for c in infos.values()] == [
        ("exact", "cnn"),
        ("milvus", "pixel"),
        ("exact", "pixel"),
    ]  # "pixel" is read as pixel features, exact


def test_kmeans_run_saved_after_a_search_keeps_keys_and_vectors_together(dataset):
    """Searching sorts an IVF index's rows by list; a save afterwards must still pair each key with its vector
    (8a8fad0 stored the rows in list order with the keys in insertion order)."""
    results = dataset.load_brain_results("kmeans", cache=False)
    ids = dataset.values("id")
    results.sort_by_similarity(ids[3], k=5)
    results.save()
    vectors, got_ids, _ = dataset.load_brain_results("kmeans", cache=False).get_embeddings(ids)
    np.testing.assert_allclose(vectors, np.stack(dataset.values("emb")), rtol=1e-6, atol=1e-6)
    assert got_ids.tolist() == ids
