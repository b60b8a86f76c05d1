"""Object (patch) similarity: a revsearch index over a detections field, on every index kind, compared
with fob's ``sklearn`` backend on the same patch embeddings (real Caltech images, pixel features of
the crops computed by FiftyOne's patch pipeline with the revsearch extractor as its model)."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest
from fiftyone import ViewField as F

from plugin_helpers import unique_name
from revsearch.features.pixel import PixelFeatures
from revsearch.fiftyone.tools import ExtractorModel

KINDS = ("exact", "kmeans", "milvus")
LABELS = ("cat", "dog")


def boxes(rng: np.random.Generator, count: int) -> list[fo.Detection]:
    out = []
    for _ in range(count):
        w, h = rng.uniform(0.2, 0.6, size=2)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        out.append(fo.Detection(label=str(rng.choice(LABELS)), bounding_box=[x, y, w, h]))
    return out


@pytest.fixture(scope="module")
def patches(caltech_files, tmp_path_factory):
    """24 images with 0-3 boxes each (the first has none, the second no field); the third image's first
    box is repeated (a planted duplicate patch). Patch embeddings in ``gt.detections.pe``; a sklearn
    run and a revsearch run of each kind over them (metric euclidean)."""
    rng = np.random.default_rng(7)
    ds = fo.Dataset(unique_name("patches"))
    samples = []
    for i, path in enumerate(caltech_files):
        sample = fo.Sample(filepath=path)
        if i == 0:
            sample["gt"] = fo.Detections(detections=[])
        elif i > 1:
            dets = boxes(rng, int(rng.integers(1, 4)))
            if i == 2:
                dets.append(fo.Detection(label=dets[0].label, bounding_box=list(dets[0].bounding_box)))
            sample["gt"] = fo.Detections(detections=dets)
        samples.append(sample)
    ds.add_samples(samples)
    ds.compute_patch_embeddings(ExtractorModel(PixelFeatures(8)), "gt", embeddings_field="pe")
    uri = str(tmp_path_factory.mktemp("milvus") / "patches.db")
    options = {"exact": {}, "kmeans": {"n_clusters": 3, "nprobe": 1}, "milvus": {"uri": uri}}
    fob.compute_similarity(
        ds, patches_field="gt", embeddings="pe", backend="sklearn", metric="euclidean", brain_key="sk"
    )
    for kind in KINDS:
        fob.compute_similarity(
            ds,
            patches_field="gt",
            embeddings="pe",
            backend="revsearch",
            index_kind=kind,
            metric="euclidean",
            brain_key=kind,
            **options[kind],
        )
    yield ds
    ds.delete()


def label_ids(ds) -> list[str]:
    return ds.values("gt.detections.id", unwind=True)


def patch_values(ds, attribute: str) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Label ids, the sample id of each, and the labels' ``attribute`` by label id."""
    sample_ids, ids, values = ds.exists("gt").values(["id", "gt.detections.id", f"gt.detections.{attribute}"])
    owners = [s for s, row in zip(sample_ids, ids) for _ in row]
    flat = [i for row in ids for i in row]
    return flat, owners, dict(zip(flat, (np.asarray(v) for row in values for v in row)))


def sorted_both(samples, kind: str, query, **kwargs) -> list[tuple[list, list]]:
    """Ids and distances of a patches view sorted by the revsearch run ``kind`` and by sklearn."""
    found = []
    for key in (kind, "sk"):
        with samples.load_brain_results(key).use_view(samples) as results:
            view = results.sort_by_similarity(query, dist_field="dist", **kwargs)
        found.append((view.values("id"), view.values("dist")))
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_every_patch_is_indexed_under_its_label_id(patches, kind):
    results = patches.load_brain_results(kind, cache=False)
    ids = label_ids(patches)
    owners = dict(zip(*patches.to_patches("gt").values(["id", "sample_id"])))
    assert sorted(results.label_ids.tolist()) == sorted(ids) and len(ids) > 20
    assert [owners[i] for i in results.label_ids] == results.sample_ids.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_sorting_a_patches_view_as_sklearn(patches, kind):
    view = patches.to_patches("gt")
    query = view.first().id
    (got_ids, got), (ids, dists) = sorted_both(view, kind, query, k=8)
    assert got_ids == ids and got_ids[0] == query and len(got_ids) == 8
    np.testing.assert_allclose(got, dists, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_sorting_samples_by_a_patch_keeps_the_matching_labels(patches, kind):
    """On a sample view, samples come in the order of their best patch and only the k patches stay.
    (No ``dist_field`` here: FiftyOne's own code fails to write it on a sample view, for sklearn too.)"""
    query = label_ids(patches)[5]
    views = [patches.load_brain_results(key).sort_by_similarity(query, k=6) for key in (kind, "sk")]
    assert views[0].values("id") == views[1].values("id")
    assert views[0].values("gt.detections.id", unwind=True) == views[1].values("gt.detections.id", unwind=True)
    assert len(views[0].values("gt.detections.id", unwind=True)) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_a_filtered_label_view_searches_only_its_patches(patches, kind):
    view = patches.filter_labels("gt", F("label") == "cat").to_patches("gt")
    query = label_ids(patches.filter_labels("gt", F("label") == "dog"))[0]  # a query outside the view
    with patches.load_brain_results(kind).use_view(view) as results:
        assert sorted(results.current_label_ids.tolist()) == sorted(view.values("id"))
        sorted_view = results.sort_by_similarity(query, k=100)
    assert sorted(sorted_view.values("id")) == sorted(view.values("id"))
    assert sorted_both(view, kind, query, k=100)[0][0] == sorted_view.values("id")


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_patches_as_sklearn(patches, kind):
    found = []
    for key in (kind, "sk"):
        results = patches.load_brain_results(key)
        results.find_duplicates(thresh=1e-3)
        found.append((sorted(results.duplicate_ids), sorted(results.neighbors_map)))
    assert found[0] == found[1] and len(found[0][0]) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_add_get_and_remove_by_label_and_sample(patches, kind, tmp_path):
    ds = patches.clone()
    try:
        options = {"uri": str(tmp_path / "a.db")} if kind == "milvus" else {}
        results = fob.compute_similarity(
            ds, patches_field="gt", embeddings=False, backend="revsearch", index_kind=kind, brain_key="p", **options
        )
        ids, owners, pe = patch_values(ds, "pe")
        vectors = np.stack([pe[i] for i in ids])
        results.add_to_index(vectors, owners, label_ids=ids)
        results.save()
        got, got_samples, got_labels = results.get_embeddings(label_ids=ids[:3])
        np.testing.assert_allclose(got, vectors[:3], rtol=1e-6)
        assert got_samples.tolist() == owners[:3] and got_labels.tolist() == ids[:3]
        got, got_samples, got_labels = results.get_embeddings(sample_ids=[owners[0]])
        assert set(got_samples) == {owners[0]} and sorted(got_labels) == sorted(
            np.array(ids)[np.array(owners) == owners[0]]
        )
        with pytest.raises(ValueError, match="label IDs are needed"):
            results.add_to_index(vectors[:1], owners[:1])

        results.remove_from_index(sample_ids=[owners[0]])  # every patch of that sample
        results.remove_from_index(label_ids=[ids[-1]])
        results.save()
        reloaded = ds.load_brain_results("p", cache=False)
        expected = {i for i, o in zip(ids[:-1], owners[:-1]) if o != owners[0]}
        assert set(reloaded.label_ids.tolist()) == expected
        assert dict(zip(reloaded.label_ids, reloaded.sample_ids)) == {
            i: o for i, o in zip(ids, owners) if i in expected
        }
        query = sorted(expected)[0]
        assert reloaded.sort_by_similarity(query, k=3).values("id")[0] == dict(zip(ids, owners))[query]
    finally:
        ds.delete()


def test_compute_with_a_model_writes_the_label_embeddings_field(patches):
    """``compute_similarity(model=..., patches_field=..., embeddings=<new field>)`` crops each box
    (``force_square``), embeds it and writes the vector on the label, as sklearn does."""
    ds = patches.clone()
    try:
        model = ExtractorModel(PixelFeatures(8))
        results = fob.compute_similarity(
            ds,
            patches_field="gt",
            model=model,
            embeddings="sq",
            force_square=True,
            backend="revsearch",
            index_kind="exact",
            brain_key="m",
        )
        ids, _, stored = patch_values(ds, "sq")
        assert results.total_index_size == len(ids) and all(v.ndim == 1 for v in stored.values())
        got, _, got_ids = results.get_embeddings()
        np.testing.assert_allclose(got, np.stack([stored[i] for i in got_ids]), rtol=1e-6)
        pe = patch_values(ds, "pe")[2]
        assert not np.allclose(got, np.stack([pe[i] for i in got_ids]))  # force_square: other crops
        results.remove_from_index(label_ids=got_ids[:2].tolist())
        left = patch_values(ds, "sq")[2]
        assert {i for i, v in left.items() if v.ndim == 0} == set(got_ids[:2].tolist())
    finally:
        ds.delete()


def test_a_patch_index_skips_samples_without_labels_and_tells_label_fields_apart(patches):
    results = patches.load_brain_results("exact")
    first, second = patches.limit(2).values("id")
    assert first not in set(results.sample_ids) and second not in set(results.sample_ids)
    with pytest.raises(ValueError, match="takes no label IDs"):
        fob.compute_similarity(patches, embeddings=False, backend="revsearch", index_kind="exact").add_to_index(
            np.zeros((1, 4), np.float32), [first], label_ids=["x"]
        )


@pytest.mark.parametrize("kind", ("exact", "milvus"))
def test_build_sync_and_query_a_patch_index_with_the_plugin_tools(patches, kind, tmp_path):
    """``tools.build_index(patches_field=...)``: each image decoded once, crops batched across images;
    an unreadable image is reported, not fatal; sync follows added and deleted objects."""
    from revsearch.fiftyone import tools

    ds = patches.clone()
    try:
        broken = ds.skip(3).first()
        broken.filepath = str(tmp_path / "missing.jpg")
        broken.save()
        options = {"uri": str(tmp_path / "b.db")} if kind == "milvus" else {}
        results, failures = tools.build_index(
            ds,
            "b",
            kind,
            extractor=PixelFeatures(8),
            patches_field="gt",
            force_square=True,
            keep_field="kept",
            **options,
        )
        assert set(failures) == {broken.id}
        expected = set(label_ids(ds.exclude(broken.id)))
        assert set(results.label_ids.tolist()) == expected
        assert results.config.force_square is True
        kept = patch_values(ds, "kept")[2]
        assert {i for i, v in kept.items() if v.ndim == 1} == expected  # each object's vector on its label

        sample = ds.skip(5).first()  # one object more, one less
        sample.gt.detections = sample.gt.detections[1:] + boxes(np.random.default_rng(1), 1)
        sample.save()
        status = tools.index_status(results)
        assert broken.id in status["not_indexed"] and sample.id in status["not_indexed"]
        assert len(status["deleted"]) == 1
        tools.sync_index(results)
        assert set(results.label_ids.tolist()) == set(label_ids(ds.exclude(broken.id)))

        query = sample.gt.detections[-1].id
        view = tools.query_view(results, ds.to_patches("gt"), query, k=3)
        assert view.values("id")[0] == query and len(view) == 3
    finally:
        ds.delete()
