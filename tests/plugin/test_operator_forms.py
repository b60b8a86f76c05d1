"""What the operator forms say and check before Execute, and what their outputs show (SDK level):
stale indexes, one embeddings field per index, tables, confirmed deletes, weights present offline,
copy-mode advice, the bounds of number boxes."""

from __future__ import annotations

import asyncio
import importlib
import re
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext, execute_or_delegate_operator

from plugin_helpers import MODEL, URI, make_dataset
from revsearch.fiftyone import tools


@pytest.fixture
def dataset(caltech_files, plugins_dir):
    """12 photos in a pixel index 'px' (fast to build and to update)."""
    ds = make_dataset("forms", caltech_files[:12])
    execute(ds, "build_index", brain_key="px", index_kind="exact", features="pixel")
    yield ds
    ds.delete()


def execute(dataset, name: str, **params) -> dict:
    result = foo.execute_operator(URI + name, ctx={"dataset": dataset, "view": dataset.view(), "params": params})
    result.raise_exceptions()
    return result.result


def form(dataset, name: str, **params) -> dict:
    """The form an operator shows for ``params`` (what the App renders), as JSON."""
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
    return foo.get_operator(URI + name).resolve_input(ctx).to_json()["type"]["properties"]


def output(dataset, name: str) -> dict | None:
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    shown = foo.get_operator(URI + name).resolve_output(ctx)
    return shown.to_json()["type"]["properties"] if shown is not None else None


def test_search_and_duplicates_forms_announce_a_stale_index_and_update_it_first(dataset, caltech_files):
    assert "stale" not in form(dataset, "search_by_image", brain_key="px")
    added = fo.Sample(filepath=caltech_files[20])
    dataset.add_sample(added)
    dataset.delete_samples(dataset.first())
    for name, params in (("search_by_image", {}), ("find_near_duplicates", {"mode": "near"})):
        shown = form(dataset, name, brain_key="px", **params)
        label = shown["stale"]["view"]["label"]
        assert "1 samples not indexed, 1 indexed samples deleted" in label, label
        assert shown["update_first"]["default"] is True  # 1 sample to embed: few

    kept = dict(brain_key="px", source="path", path=caltech_files[20], k=3)
    assert execute(dataset, "search_by_image", **kept)["ids"][0] != added.id  # not indexed: never found
    out = execute(dataset, "search_by_image", update_first=True, **kept)
    assert out["ids"][0] == added.id
    assert not tools.index_status(dataset.load_brain_results("px"))["stale"]
    assert "stale" not in form(dataset, "search_by_image", brain_key="px")


def test_update_first_is_off_by_default_when_many_samples_are_to_embed(dataset, caltech_files, monkeypatch):
    common = importlib.import_module(foo.get_operator(URI + "build_index").__module__.rsplit(".", 1)[0] + ".common")
    monkeypatch.setattr(common, "SMALL_UPDATE", 1)
    dataset.add_samples([fo.Sample(filepath=f) for f in caltech_files[20:22]])
    assert form(dataset, "search_by_image", brain_key="px")["update_first"]["default"] is False


def test_each_build_keeps_its_vectors_in_its_own_field_and_fit_forms_say_which(dataset):
    assert form(dataset, "build_index", brain_key="pix2", features="pixel")["keep_field"]["default"] == (
        "pix2_embedding"
    )
    out = execute(dataset, "build_index", brain_key="pix2", index_kind="exact", features="pixel")
    assert out["keep_field"] == "pix2_embedding" and "revsearch_embedding" not in dataset.get_field_schema()
    for name in ("fit_pca", "fit_kmeans"):
        shown = form(dataset, name, embeddings_field="pix2_embedding")
        said = shown["embeddings_field_info"]["view"]["label"]
        assert "kept by the build of index 'pix2'" in said and "pixel 32x32 thumbnails, 3072-d" in said, said
    assert form(dataset, "fit_pca", embeddings_field="pix2_embedding")["out_field"]["default"] == "pix2_embedding_pca"


def test_kmeans_sizes_and_index_list_are_tables(dataset):
    execute(dataset, "build_index", brain_key="pix2", index_kind="exact", features="pixel")
    out = execute(
        dataset, "fit_kmeans", embeddings_field="pix2_embedding", n_clusters=12, cluster_field="c", distance_field="d"
    )
    assert [row["cluster"] for row in out["cluster_sizes"]] == list(range(12))  # 10 after 9, not after 1
    sizes = output(dataset, "fit_kmeans")["cluster_sizes"]["view"]
    assert sizes["name"] == "TableView" and [c["key"] for c in sizes["columns"]] == ["cluster", "samples"]
    listed = output(dataset, "list_indexes")["indexes"]["view"]
    assert listed["name"] == "TableView"
    columns = [c["key"] for c in listed["columns"]]
    rows = execute(dataset, "list_indexes")["indexes"]
    assert all(list(row) == columns for row in rows)
    assert {row["brain_key"]: row["indexed"] for row in rows} == {"px": 12, "pix2": 12}


def test_delete_asks_for_confirmation_naming_the_index_and_its_size(dataset):
    shown = form(dataset, "delete_index")
    assert shown["brain_key"].get("default") is None and "confirm" not in shown
    confirm = form(dataset, "delete_index", brain_key="px")["confirm"]
    assert "index 'px' (exact, pixel 32x32 thumbnails, 3072-d, 12 samples)" in confirm["view"]["label"]
    assert confirm["invalid"] is True
    assert not form(dataset, "delete_index", brain_key="px", confirm=True)["confirm"].get("invalid")
    with pytest.raises(Exception, match="Tick to confirm: this cannot be undone"):
        execute(dataset, "delete_index", brain_key="px")
    assert "px" in dataset.list_brain_runs()
    out = execute(dataset, "delete_index", brain_key="px", confirm=True)
    assert out["message"].startswith("Deleted index 'px'") and "px" not in dataset.list_brain_runs()


def test_build_form_defaults_to_weights_present_and_says_so(dataset):
    """The team share holds MobileNetV2's IMAGENET1K_V1 weights only (as an offline machine would)."""
    present = {b: tools.present_weights(b) for b in ("mobilenet_v2", "resnet18", "resnet50")}
    assert present == {"mobilenet_v2": ["IMAGENET1K_V1"], "resnet18": [], "resnet50": []}
    shown = form(dataset, "build_index", brain_key="b", features="cnn")
    backbone = shown["backbone"]
    assert backbone["default"] == "mobilenet_v2" and shown["weights"]["default"] == "IMAGENET1K_V1"
    labels = {c["value"]: c["label"] for c in backbone["view"]["choices"]}
    assert labels == {
        "mobilenet_v2": "mobilenet_v2 (weights present)",
        "resnet18": "resnet18 (weights will be downloaded)",
        "resnet50": "resnet50 (weights will be downloaded)",
    }
    assert form(dataset, "build_index", backbone="resnet50")["weights"]["default"] == "DEFAULT"


def test_weights_missing_offline_are_reported_in_the_form_words(dataset):
    with pytest.raises(Exception) as raised:
        execute(dataset, "build_index", brain_key="r18", features="cnn", backbone="resnet18", weights="")
    message = str(raised.value)
    assert "weights=None" not in message and "'random'" in message and "weights present" in message
    assert "r18" not in dataset.list_brain_runs()


def test_copy_mode_advice_on_a_pixel_index_matches_the_build_form(dataset):
    error = form(dataset, "search_by_image", brain_key="px", mode="copy")["mode"]["error_message"]
    assert "Features = cnn" in error and "Copy-mode thumbnails" not in error
    assert "copy_pixels" not in form(dataset, "build_index", features="pixel")  # the field it must not name


@pytest.mark.parametrize(
    ("name", "box", "minimum"),
    [("search_by_image", "k", 1), ("fit_kmeans", "n_clusters", 1), ("build_index", "copy_pixels", 0)],
)
def test_number_boxes_accept_their_bound_and_say_so(dataset, name, box, minimum):
    execute(dataset, "build_index", brain_key="pix2", index_kind="exact", features="pixel")
    params = {"brain_key": "px", "embeddings_field": "pix2_embedding"} if name != "build_index" else {}
    assert not form(dataset, name, **params, **{box: minimum})[box].get("invalid")
    below = form(dataset, name, **params, **{box: minimum - 1})[box]
    assert below["invalid"] is True and below["error_message"] == f"Must be at least {minimum}"
    assert "min" not in below["type"] or below["type"]["min"] is None


def test_long_operators_say_scheduling_needs_a_worker_and_how_to_start_one(plugins_dir):
    for name in ("build_index", "update_index", "compute_embeddings", "find_near_duplicates"):
        assert "start one with 'fiftyone delegated launch'" in foo.get_operator(URI + name).config.description


def streamed(dataset, name: str, **params) -> list[dict]:
    """The lines an operator streams to the App (which sends its layout, ``spaces``, with each request)."""
    request = {"dataset_name": dataset.name, "view": dataset.view()._serialize(), "params": params, "spaces": None}
    result = asyncio.run(execute_or_delegate_operator(URI + name, request, exhaust=False))
    result.raise_exceptions()
    return [message.to_json() for message in result.result]


def test_build_and_update_stream_counts_and_time_left_to_the_app_and_then_the_result(dataset, caltech_files):
    lines = streamed(dataset, "build_index", brain_key="cnn", index_kind="exact", batch_size=4, **MODEL)
    asks = [line["body"] for line in lines]
    said = [ask["params"]["label"] for ask in asks if ask["operator_uri"] == "set_progress"]
    assert said[0].startswith("embedded 4/12 images, ~") and said[0].endswith(" s left"), said
    assert said[-1] == "embedded 12/12 images"
    assert [ask["operator_uri"] for ask in asks[-2:]] == ["reload_dataset", "show_output"]
    assert asks[-1]["params"]["results"]["indexed"] == 12
    assert "indexed" in asks[-1]["params"]["outputs"]["type"]["properties"]
    dataset.add_samples([fo.Sample(filepath=f) for f in caltech_files[12:20]])
    asks = [line["body"] for line in streamed(dataset, "update_index", brain_key="cnn")]
    assert asks[-2]["params"]["label"] == "embedded 8/8 images" and asks[-1]["params"]["results"]["added"] == 8
    assert output(dataset, "update_index") is None  # the prompt closes: the result is in the output dialog


def test_an_error_while_streaming_reaches_the_app_as_an_error_notice(dataset):
    lines = streamed(dataset, "build_index", brain_key="r18", features="cnn", backbone="resnet18", weights="")
    ask = lines[-1]["body"]
    assert ask["operator_uri"] == "notify" and ask["params"]["variant"] == "error", lines
    assert "weights present" in ask["params"]["message"]


def test_pixel_distances_are_the_mean_squared_difference_per_pixel_value(dataset, caltech_files):
    out = execute(dataset, "search_by_image", brain_key="px", source="path", path=caltech_files[3], k=12)
    results = dataset.load_brain_results("px")
    ids, _, raw = results._kneighbors(results.embed_query(caltech_files[3]), k=12, return_dists=True)
    assert out["ids"] == list(ids) and out["distances"][0] == pytest.approx(0, abs=1e-9)
    assert out["distances"] == pytest.approx([d / (3072 * 255**2) for d in raw])
    assert 0 < out["distances"][-1] < 1 and dataset.values("revsearch_dist") is not None
    said = form(dataset, "search_by_image", brain_key="px")["dist_field"]["view"]["description"]
    assert "mean squared difference per pixel value" in said


def test_long_forms_warn_when_scheduled_operations_wait_for_a_worker(dataset, monkeypatch):
    common = importlib.import_module(foo.get_operator(URI + "build_index").__module__.rsplit(".", 1)[0] + ".common")
    shown = form(dataset, "build_index", brain_key="b")
    assert "no_worker" not in shown and "'fiftyone delegated launch'" in shown["worker"]["view"]["label"]
    request = {"dataset": dataset, "request_delegation": True, "params": {"brain_key": "later", "features": "pixel"}}
    assert foo.execute_operator(URI + "build_index", ctx=request).delegated  # queued: no worker takes it
    service = foo.delegated.DelegatedOperationService()
    try:
        assert "no_worker" not in form(dataset, "build_index", brain_key="b")  # just queued: not yet a sign
        monkeypatch.setattr(common, "WORKER_WAIT", timedelta(0))
        for name in ("build_index", "update_index", "compute_embeddings", "find_near_duplicates"):
            said = form(dataset, name, brain_key="px")["no_worker"]["view"]
            assert said["label"].startswith("No worker is running: 1 scheduled operations wait"), said
            assert "'fiftyone delegated launch'" in said["description"]
    finally:
        for op in service.list_operations(dataset_name=dataset.name):
            service.delete_operation(op.id)


def test_search_form_flags_query_mistakes_before_execute(dataset, caltech_files, tmp_path):
    def error(**params) -> str | None:
        shown = form(dataset, "search_by_image", brain_key="px", **params)
        box = shown[params["source"]]
        return box["error_message"] if box.get("invalid") else None

    assert error(source="path", path=caltech_files[0]) is None
    assert error(source="path", path=str(tmp_path / "gone.jpg")) == f"No file at {tmp_path / 'gone.jpg'} on the server"
    assert error(source="url", url="https://example.com/a.jpg") is None
    assert error(source="url", url="ftp://example.com/a.jpg") == "Give an http:// or https:// address"
    assert error(source="upload", upload={"name": "a.png", "type": "image/png", "content": ""}) is None
    said = error(source="upload", upload={"name": "notes.pdf", "type": "application/pdf", "content": ""})
    assert said.startswith("'notes.pdf' is not an image"), said
    assert "all" not in form(dataset, "search_by_image", brain_key="px", source="path", k=12)
    shown = form(dataset, "search_by_image", brain_key="px", source="path", k=13)
    assert shown["all"]["view"]["label"] == "Only 12 samples are searched: all of them are shown"


def test_list_indexes_shows_a_running_build_and_reports_one_whose_process_ended(dataset, monkeypatch):
    """A build records a marker in the dataset while it runs (what a reloaded tab's *list indexes* shows);
    the marker goes when it ends, also when it fails; one left by a killed process is reported and removed."""
    common = importlib.import_module(foo.get_operator(URI + "build_index").__module__.rsplit(".", 1)[0] + ".common")
    monkeypatch.setattr(common, "MARKER_EVERY", 0.0)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    dataset.reload()  # a marker as a build killed in another process left it (another key: kept apart)
    dataset.info.setdefault(common.RUNNING_INFO, {})["killed"] = {
        "action": "build", "done": 4, "total": 30, "unit": "images", "started": "2026-01-01T00:00:00+00:00",
        "pid": dead.pid, "host": socket.gethostname(),
    }  # fmt: skip
    dataset.save()

    written, release = threading.Event(), threading.Event()
    record = common._marker_update

    def held(ds, key, marker, only_if=None):  # the build waits, once it has noted 4 images, until listed
        record(ds, key, marker, only_if)
        if marker and marker["done"] == 4:
            written.set()
            release.wait(120)

    monkeypatch.setattr(common, "_marker_update", held)
    params = dict(brain_key="cnn", index_kind="exact", batch_size=4, **MODEL)
    build = threading.Thread(target=execute, args=(dataset, "build_index"), kwargs=params)
    build.start()
    try:
        assert written.wait(120)
        rows = {row["brain_key"]: row for row in execute(dataset, "list_indexes")["indexes"]}
    finally:
        release.set()
        build.join()
    assert re.fullmatch(r"building: 4/12 images, started \d+ s ago", rows["cnn"]["status"]), rows["cnn"]
    assert rows["cnn"]["index_kind"] == "exact" and rows["cnn"]["indexed"] == ""
    assert rows["killed"]["status"] == (
        f"interrupted build (process {dead.pid} ended): marker removed, run the build again"
    ), rows["killed"]
    assert rows["px"]["status"] == "ready" and rows["px"]["indexed"] == 12
    rows = {row["brain_key"]: row for row in execute(dataset, "list_indexes")["indexes"]}
    assert set(rows) == {"px", "cnn"} and rows["cnn"]["status"] == "ready" and rows["cnn"]["indexed"] == 12
    assert common.running_markers(dataset) == {}  # the build's marker and the killed one are gone

    with pytest.raises(Exception, match="weights present"):  # a failed build leaves no marker either
        execute(dataset, "build_index", brain_key="r18", features="cnn", backbone="resnet18", weights="")
    assert common.running_markers(dataset) == {}
