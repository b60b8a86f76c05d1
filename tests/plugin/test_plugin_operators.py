"""The plugin's operators, run through FiftyOne's SDK operator execution API on Caltech images."""

from __future__ import annotations

import base64
import functools
import http.server
import importlib
import re
import shutil
import threading
from pathlib import Path

import cv2
import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
import numpy as np
import pytest
import yaml
from fiftyone.operators.executor import ExecutionContext
from sklearn.metrics import adjusted_rand_score

from plugin_helpers import MODEL, REPO, URI, make_dataset
from revsearch import Embedder, PCAReducer
from revsearch.fiftyone import tools


@pytest.fixture(scope="module")
def dataset(caltech_files, plugins_dir):
    ds = make_dataset("ops", caltech_files)
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def run(dataset):
    """Execute an operator on ``dataset``; returns its result dict (raises on error)."""

    def _run(name: str, selected: list[str] | None = None, view=None, **params) -> dict:
        ctx = {
            "dataset": dataset,
            "view": view if view is not None else dataset.view(),
            "params": params,
            "selected": selected or [],
        }
        result = foo.execute_operator(URI + name, ctx=ctx)
        result.raise_exceptions()
        return result.result

    return _run


@pytest.fixture(scope="module")
def embedded(dataset, run):
    """The embeddings field, computed by the operator (once per module)."""
    out = run("compute_embeddings", embeddings_field="emb", features="cnn", batch_size=8, pooling="gem", **MODEL)
    assert out == {"embeddings_field": "emb", "embedded": len(dataset), "failures": {}}
    return "emb"


@pytest.fixture(scope="module")
def milvus_index(dataset, run, embedded, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("ops-milvus") / "ops.db")
    out = run(
        "build_index", brain_key="mil", index_kind="milvus", uri=uri, index_type="FLAT", embeddings_field=embedded
    )
    assert out["indexed"] == len(dataset)
    return "mil"


def test_plugin_is_discovered_with_all_declared_operators(plugins_dir):
    declared = yaml.safe_load((REPO / "fiftyone.yml").read_text())["operators"]
    plugin = next(p for p in fop.list_plugins() if p.name == "@revsearch/revsearch")
    assert Path(plugin.directory).resolve() == REPO
    listed = {op.uri for op in foo.list_operators() if op.plugin_name == "@revsearch/revsearch"}
    assert listed == {URI + name for name in declared}


def test_compute_embeddings_stores_the_library_vectors(dataset, embedded):
    stored = np.stack(dataset.values(embedded))
    expected = Embedder(**MODEL).embed_paths(dataset.values("filepath"), progress=False).vectors
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    info = dataset.get_field(embedded).info["revsearch_extractor"]
    assert (info["backbone"], info["pooling"], info["dim"]) == ("mobilenet_v2", "gem", 1280)


def test_fit_pca_writes_reduced_unit_vectors(dataset, run, embedded):
    out = run("fit_pca", embeddings_field=embedded, n_components=6, whiten=False, out_field="emb_pca")
    reduced = np.stack(dataset.values("emb_pca"))
    expected = PCAReducer.fit(np.stack(dataset.values(embedded)), 6).transform(np.stack(dataset.values(embedded)))
    np.testing.assert_allclose(np.abs(reduced), np.abs(expected), atol=1e-4)  # PCA signs are arbitrary
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    assert 0 < out["explained_variance"] <= 1 and len(out["explained_variance_ratios"]) == 6


def test_fit_kmeans_clusters_follow_the_classes(dataset, run, embedded):
    out = run(
        "fit_kmeans", embeddings_field=embedded, n_clusters=4, cluster_field="cluster", distance_field="cluster_dist"
    )
    clusters = dataset.values("cluster")
    assert [row["cluster"] for row in out["cluster_sizes"]] == list(range(4))  # numeric order
    sizes = {row["cluster"]: row["samples"] for row in out["cluster_sizes"]}
    assert sizes == {c: clusters.count(c) for c in range(4)}
    assert sum(sizes.values()) == len(dataset)
    assert adjusted_rand_score(dataset.values("ground_truth.label"), clusters) > 0.6
    vectors = np.stack(dataset.values(embedded))
    for c in range(4):  # the stored distance is to the cluster's centre: members are nearer it than others'
        members = vectors[np.array(clusters) == c]
        dist = np.array(dataset.match(fo.ViewField("cluster") == c).values("cluster_dist"))
        assert np.all(dist >= 0) and dist.mean() < np.linalg.norm(members - vectors.mean(0), axis=1).mean() + 1e-6


def test_search_by_selected_sample_sorts_by_distance(dataset, run, milvus_index):
    query = dataset.values("id")[14]
    out = run("search_by_image", selected=[query], brain_key=milvus_index, source="selected", k=6, dist_field="d_sel")
    vectors, ids = np.stack(dataset.values("emb")), dataset.values("id")
    dist = ((vectors - vectors[14]) ** 2).sum(axis=1)
    assert out["ids"] == [ids[i] for i in np.argsort(dist)[:6]]
    np.testing.assert_allclose(out["distances"], np.sort(dist)[:6], atol=1e-4)
    stored = dict(zip(dataset.values("id"), dataset.values("d_sel")))
    assert [stored[i] for i in out["ids"]] == out["distances"]


@pytest.mark.parametrize("kind", ["milvus", "kmeans", "pixel"])
def test_search_by_uploaded_image(dataset, run, embedded, milvus_index, caltech_files, kind):
    if kind == "milvus":
        key = milvus_index
    else:
        key = f"up_{kind}"
        if key not in dataset.list_brain_runs():
            extra = (
                {"index_kind": "kmeans", "n_clusters": 4, "nprobe": 4, "embeddings_field": embedded}
                if kind == "kmeans"
                else {"index_kind": "exact", "features": "pixel"}
            )
            run("build_index", brain_key=key, **extra)
    content = base64.b64encode(Path(caltech_files[19]).read_bytes()).decode()
    upload = {"name": "q.jpg", "type": "image/jpeg", "size": 1, "content": f"data:image/jpeg;base64,{content}"}
    out = run("search_by_image", brain_key=key, source="upload", upload=upload, k=3)
    assert out["ids"][0] == dataset.values("id")[19]
    assert out["distances"] == sorted(out["distances"])


def test_search_by_local_path_and_url(dataset, run, milvus_index, caltech_files):
    expected = dataset.values("id")[3]
    by_path = run("search_by_image", brain_key=milvus_index, source="path", path=caltech_files[3], k=4)
    assert by_path["ids"][0] == expected and by_path["distances"][0] == pytest.approx(0, abs=1e-4)

    folder = Path(caltech_files[3]).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{Path(caltech_files[3]).name}"
    try:
        by_url = run("search_by_image", brain_key=milvus_index, source="url", url=url, allow_private_urls=True, k=4)
        assert by_url["ids"] == by_path["ids"]
        with pytest.raises(Exception, match="private-network address; tick .Allow private-network URLs."):
            run("search_by_image", brain_key=milvus_index, source="url", url=url, k=4)
    finally:
        server.shutdown()


def test_near_duplicates_finds_the_copied_image(dataset, run, caltech_files, tmp_path):
    copy = tmp_path / "copy.jpg"
    shutil.copy(caltech_files[8], copy)
    ds = make_dataset("ops-dups", caltech_files[:12] + [str(copy)])
    try:
        ctx = {"dataset": ds, "view": ds.view()}
        foo.execute_operator(
            URI + "build_index", ctx={**ctx, "params": {"brain_key": "px", "index_kind": "exact", "features": "pixel"}}
        ).raise_exceptions()
        res = foo.execute_operator(
            URI + "find_near_duplicates", ctx={**ctx, "params": {"brain_key": "px", "threshold": 1.0}}
        )
        res.raise_exceptions()
        ids = ds.values("id")
        assert sorted(res.result["ids"]) == sorted([ids[8], ids[12]])
        assert (res.result["duplicates"], res.result["groups"], res.result["tagged"]) == (2, 1, 1)
        groups = ds.values("revsearch_dup_group")
        assert groups[8] == groups[12] is not None and sum(g is not None for g in groups) == 2
        assert ds.match_tags("duplicate").values("id") == [ids[12]]  # the first of the pair is kept
        nn = dict(zip(ids, ds.values("revsearch_nn_id")))
        assert nn[ids[8]] == ids[12] and nn[ids[12]] == ids[8]
        dists = dict(zip(ids, ds.values("revsearch_nn_dist")))
        assert dists[ids[8]] == dists[ids[12]] == 0.0
        assert min(s for i, s in dists.items() if i not in (ids[8], ids[12])) > 1.0
    finally:
        ds.delete()


def test_near_duplicates_form_shows_the_distance_histogram_of_its_index(run, caltech_files, tmp_path):
    """After a run, the form draws the histogram of nearest-neighbour distances for that index only."""
    copy = tmp_path / "copy.jpg"
    shutil.copy(caltech_files[3], copy)
    ds = make_dataset("ops-dup-hist", caltech_files[:10] + [str(copy)])
    try:
        ctx = {"dataset": ds, "view": ds.view()}
        for key in ("px", "px2"):
            foo.execute_operator(
                URI + "build_index",
                ctx={**ctx, "params": {"brain_key": key, "index_kind": "exact", "features": "pixel"}},
            ).raise_exceptions()

        def form(key: str) -> dict:
            return resolved_form(ds, "find_near_duplicates", mode="near", brain_key=key, threshold=1.0)

        assert "histogram" not in form("px")
        foo.execute_operator(
            URI + "find_near_duplicates", ctx={**ctx, "params": {"brain_key": "px", "threshold": 1.0}}
        ).raise_exceptions()
        plot = form("px")["histogram"]["view"]
        counts, edges, _ = ds.histogram_values("revsearch_nn_dist", bins=40)
        assert plot["data"][0]["y"] == list(counts) and sum(plot["data"][0]["y"]) == len(ds)
        assert plot["layout"]["shapes"][0]["x0"] == 1.0
        assert "histogram" not in form("px2")  # distances came from another index
    finally:
        ds.delete()


def test_exact_copies_by_file_hash_from_the_operator(run, caltech_files, tmp_path):
    copies = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for copy in copies:
        shutil.copy(caltech_files[5], copy)
    ds = make_dataset("ops-filedups", caltech_files[:8] + [str(c) for c in copies])
    try:
        res = foo.execute_operator(
            URI + "find_near_duplicates",
            ctx={"dataset": ds, "view": ds.view(), "params": {"mode": "exact", "drop_tag": "copy"}},
        )
        res.raise_exceptions()
        ids = ds.values("id")
        assert sorted(res.result["ids"]) == sorted([ids[5], ids[8], ids[9]])
        assert (res.result["groups"], res.result["tagged"]) == (1, 2)
        assert sorted(ds.match_tags("copy").values("id")) == sorted([ids[8], ids[9]])
    finally:
        ds.delete()


def test_list_inspect_update_delete(dataset, run, milvus_index, caltech_files):
    listed = {i["brain_key"]: i for i in run("list_indexes")["indexes"]}
    row = listed[milvus_index]
    assert (row["indexed"], row["not_indexed"], row["deleted"], row["changed"]) == (len(dataset), 0, 0, 0)
    assert (row["index_kind"], row["features"]) == ("milvus", "cnn mobilenet_v2 (IMAGENET1K_V1, gem), 1280-d")

    extra = fo.Sample(filepath=caltech_files[0])
    dataset.add_sample(extra)
    try:
        info = run("inspect_index", brain_key=milvus_index)
        assert (info["stale"], info["not_indexed"], info["index_kind"]) == (True, 1, "milvus")
        assert run("update_index", brain_key=milvus_index) == {"added": 1, "updated": 0, "removed": 0, "failures": {}}
        assert run("inspect_index", brain_key=milvus_index)["stale"] is False
    finally:
        dataset.delete_samples(extra)
    run("build_index", brain_key="tmp_px", index_kind="exact", features="pixel")
    out = run("delete_index", brain_key="tmp_px", confirm=True)
    assert out["message"] == f"Deleted index 'tmp_px' (exact, pixel 32x32 thumbnails, 3072-d, {len(dataset)} samples)"
    assert "tmp_px" not in dataset.list_brain_runs()


def test_long_operators_can_be_delegated(dataset, plugins_dir):
    result = foo.execute_operator(
        URI + "build_index",
        ctx={
            "dataset": dataset,
            "view": dataset.view(),
            "request_delegation": True,
            "params": {"brain_key": "delegated_px", "index_kind": "exact", "features": "pixel"},
        },
    )
    result.raise_exceptions()
    assert result.delegated
    service = foo.delegated.DelegatedOperationService()
    ops = [op for op in service.list_operations(dataset_name=dataset.name) if op.operator == URI + "build_index"]
    assert ops
    for op in ops:
        service.execute_operation(op)
    assert "delegated_px" in dataset.list_brain_runs()
    dataset.delete_brain_run("delegated_px")
    for op in ops:
        service.delete_operation(op.id)


def resolved_form(dataset, name: str, **params) -> dict:
    """The form an operator shows for ``params`` (what the App renders), as JSON."""
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
    return foo.get_operator(URI + name).resolve_input(ctx).to_json()["type"]["properties"]


def test_build_form_offers_the_features_it_describes(dataset, plugins_dir):
    features = resolved_form(dataset, "build_index", index_kind="milvus")["features"]
    offered = features["type"]["values"]
    described = re.findall(r"(\w+): ", features["view"]["description"])
    assert offered == described == ["cnn", "pixel"]


def test_build_form_flags_a_used_brain_key_and_the_library_refuses_it_before_embedding(dataset, run, milvus_index):
    key = resolved_form(dataset, "build_index", brain_key=milvus_index)["brain_key"]
    assert key["invalid"] is True and "already exists" in key["error_message"]
    assert resolved_form(dataset, "build_index")["brain_key"]["default"] not in dataset.list_brain_runs()
    with pytest.raises(ValueError, match="already used"):
        tools.build_index(dataset, milvus_index, "milvus", extractor=BrokenExtractor())


class BrokenExtractor:
    """Fails the test if anything is embedded."""

    def describe(self) -> dict:
        raise AssertionError("embedding started although the brain key is taken")

    def iter_batches(self, *args, **kwargs):
        raise AssertionError("embedding started although the brain key is taken")


def test_weights_box_empty_means_default_never_random(plugins_dir):
    common = importlib.import_module(foo.get_operator(URI + "build_index").__module__.rsplit(".", 1)[0] + ".common")
    assert common.weights_from_form("") == common.weights_from_form(None) == "DEFAULT"
    assert common.weights_from_form(" IMAGENET1K_V1 ") == "IMAGENET1K_V1"
    assert common.weights_from_form("random") is None


def test_a_new_search_clears_distances_left_on_other_samples(dataset, run, milvus_index):
    ids = dataset.values("id")
    run("search_by_image", selected=[ids[0]], brain_key=milvus_index, source="selected", k=12, dist_field="d_clear")
    out = run(
        "search_by_image", selected=[ids[20]], brain_key=milvus_index, source="selected", k=3, dist_field="d_clear"
    )
    stored = dict(zip(dataset.values("id"), dataset.values("d_clear")))
    assert {i for i, d in stored.items() if d is not None} == set(out["ids"])


def test_search_in_copy_mode_finds_a_small_copy(dataset, run, milvus_index, caltech_files, tmp_path):
    """The build operator keeps thumbnails by default; the search's 'Edited copies' mode uses them."""
    assert dataset.load_brain_results(milvus_index).config.copy_pixels == 16
    image = cv2.imread(caltech_files[2])
    cv2.imwrite(str(tmp_path / "small.png"), cv2.resize(image, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA))
    out = run("search_by_image", brain_key=milvus_index, source="path", path=str(tmp_path / "small.png"), mode="copy")
    assert out["ids"][0] == dataset.values("id")[2] and out["distances"] == sorted(out["distances"])
    assert len(out["ids"]) == len(dataset) and out["distances"][0] < 0.2  # k=25 > 24 samples
    by_sample = run("search_by_image", selected=[out["ids"][3]], brain_key=milvus_index, mode="copy", k=2)
    assert by_sample["ids"][0] == out["ids"][3]


def test_copy_mode_on_an_index_without_thumbnails_says_how_to_rebuild(dataset, run, embedded, caltech_files):
    if "no_thumbs" not in dataset.list_brain_runs():
        run("build_index", brain_key="no_thumbs", index_kind="exact", embeddings_field=embedded, copy_pixels=0)
    form = resolved_form(dataset, "search_by_image", brain_key="no_thumbs", source="path", mode="copy")
    assert form["mode"]["invalid"] is True and "rebuild it" in form["mode"]["error_message"]
    assert not resolved_form(dataset, "search_by_image", brain_key="no_thumbs", mode="similar")["mode"]["invalid"]
    with pytest.raises(Exception, match="keeps no thumbnails.*rebuild it"):
        run("search_by_image", brain_key="no_thumbs", source="path", path=caltech_files[0], mode="copy")


def test_near_duplicates_operator_finds_edited_copies_by_fusion(caltech_files, plugins_dir, tmp_path):
    image = cv2.imread(caltech_files[4])
    cv2.imwrite(str(tmp_path / "small.png"), cv2.resize(image, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA))
    ds = make_dataset("ops-copies", caltech_files[:12] + [str(tmp_path / "small.png")])
    try:
        ctx = {"dataset": ds, "view": ds.view()}
        params = {"brain_key": "cnn", "index_kind": "exact", "features": "cnn", "batch_size": 8, **MODEL}
        foo.execute_operator(URI + "build_index", ctx={**ctx, "params": params}).raise_exceptions()
        form = resolved_form(ds, "find_near_duplicates", mode="copy", brain_key="cnn")
        assert form["copy_threshold"]["default"] == 0.15 and "histogram" not in form
        res = foo.execute_operator(
            URI + "find_near_duplicates", ctx={**ctx, "params": {"mode": "copy", "brain_key": "cnn"}}
        )
        res.raise_exceptions()
        ids = ds.values("id")
        assert sorted(res.result["ids"]) == sorted([ids[4], ids[12]]) and res.result["groups"] == 1
        assert res.result["group_field"] == "revsearch_copy_group" and ds.match_tags("duplicate").values("id") == [
            ids[12]
        ]
        plot = resolved_form(ds, "find_near_duplicates", mode="copy", brain_key="cnn")["histogram"]["view"]
        assert sum(plot["data"][0]["y"]) == len(ds) and "relative distance" in plot["layout"]["xaxis"]["title"]["text"]

        foo.execute_operator(
            URI + "build_index", ctx={**ctx, "params": {**params, "brain_key": "plain", "copy_pixels": 0}}
        ).raise_exceptions()
        flagged = resolved_form(ds, "find_near_duplicates", mode="copy", brain_key="plain")["copy_threshold"]
        assert flagged["invalid"] is True and "rebuild it" in flagged["error_message"]
    finally:
        ds.delete()
