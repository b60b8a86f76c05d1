"""Every user path of the plugin, clicked in the real App (headless Debian Chromium via Playwright).

Each test opens the operator browser, fills the form as a user would (typing, choosing, uploading a
file), executes, and checks what the grid shows against the SDK's answer on the same index. The
tests share one App server; the searches use the indexes the build tests made in the App, or make
them through the SDK when run alone.
Screenshots go to ``test-artifacts/app_*.png``.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import fiftyone as fo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

from app_driver import CHROMIUM, PROMPT, TILE, App, app_server, browser_page, free_port, wait_http
from plugin_helpers import MODEL, REPO, URI, subprocess_env, unique_name
from revsearch.features.factory import make_extractor
from revsearch.fiftyone import tools

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip package 'playwright' not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent: .ci/plugin_setup.sh could not install Debian's chromium", allow_module_level=True)

K = 6  # results asked for in the searches


@pytest.fixture(scope="module")
def dataset(caltech_files, tmp_path_factory):
    """24 Caltech photos plus an exact copy of one (a near-duplicate), each tile labelled by name."""
    copy = tmp_path_factory.mktemp("dup") / "copy_of_image_0002.jpg"
    shutil.copy(caltech_files[1], copy)
    files = list(caltech_files) + [str(copy)]
    ds = fo.Dataset(unique_name("tour"))
    ds.add_samples(
        [fo.Sample(filepath=f, name=fo.Classification(label=f"{Path(f).parent.name}/{Path(f).stem}")) for f in files]
    )
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def server(dataset, plugins_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {"FIFTYONE_PLUGINS_DIR": str(plugins_dir), "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true"}
    with app_server(log, env) as (base, _):
        yield base


@pytest.fixture
def app(server, dataset):
    with browser_page(playwright_api) as page:
        yield App(page, f"{server}/datasets/{dataset.name}").open()


@pytest.fixture
def indexes(dataset, tmp_path_factory) -> None:
    """The indexes the build tests make in the App (cnn, ivf, px), made through the SDK when a test
    runs without them (alone, or after the list/delete test)."""
    dataset.reload()
    runs = dataset.list_brain_runs()
    if "cnn" not in runs:
        uri = str(tmp_path_factory.mktemp("milvus") / "tour.db")
        cnn = make_extractor({"type": "cnn", **MODEL})
        tools.build_index(dataset, "cnn", "milvus", cnn, keep_field="cnn_embedding", uri=uri)
    if "ivf" not in runs:
        tools.build_index(dataset, "ivf", "kmeans", embeddings_field="cnn_embedding", n_clusters=4)
    if "px" not in runs:
        tools.build_index(dataset, "px", "exact", make_extractor("pixel"))


def label_of(path: str | Path) -> str:
    return f"{Path(path).parent.name}/{Path(path).stem}"


def expected_search(dataset, key: str, query, k: int = K, samples=None) -> tuple[list[str], list[float]]:
    """The SDK's answer for the same query on the same index: labels and distances, nearest first."""
    dataset.reload()  # the App's process added fields and runs
    results = dataset.load_brain_results(key, cache=False)
    vector = query[0] if isinstance(query, list) else results.embed_query(query, allow_private_urls=True)
    results.use_view(samples if samples is not None else dataset)
    ids, _, dists = results._kneighbors(vector, k=k, return_dists=True)
    labels = dict(zip(*dataset.values(["id", "name.label"])))
    return [labels[i] for i in ids], dists


def assert_grid_shows(app: App, dataset, labels: list[str], dists: list[float], field: str = "revsearch_dist") -> None:
    """The grid lists exactly ``labels`` in order, each tile showing its distance."""
    shown = app.wait_for_labels(labels)
    assert shown == labels
    app.show_field(field)
    deadline = time.monotonic() + 20
    while not all(field in drawn for drawn in app.grid()) and time.monotonic() < deadline:
        app.page.wait_for_timeout(500)
    assert [float(drawn[field]) for drawn in app.grid()] == pytest.approx(dists, rel=2e-2, abs=2e-3)


# ---- build: each kind, the key check --------------------------------------------------------------
def test_build_milvus_with_cnn_keeps_embeddings(app, dataset, tmp_path_factory):
    uri = tmp_path_factory.mktemp("milvus") / "tour.db"
    app.open_operator("revsearch: build index")
    app.fill("Brain key", "cnn")
    app.choose("Index", "milvus")
    app.fill("Milvus URI", uri)
    app.choose("Backbone", f"{MODEL['backbone']} (weights present)")
    app.fill("Weights", MODEL["weights"])
    app.screenshot("app_build_form")
    out = app.execute()
    assert re.search(rf"Samples indexed:?\s+{len(dataset)}", out), out
    dataset.reload()
    assert dataset.get_brain_info("cnn").config.index_kind == "milvus"
    assert dataset.load_brain_results("cnn").config.extractor["weights"] == MODEL["weights"]
    assert len(dataset.exists("cnn_embedding")) == len(dataset)  # the field named after the index


def test_build_kmeans_and_pixel_indexes(app, dataset):
    app.open_operator("revsearch: build index")
    app.fill("Brain key", "ivf")
    app.choose("Index", "kmeans")
    app.fill("Clusters", 4)
    app.choose("Embeddings", "cnn_embedding")
    out = app.execute()
    assert re.search(rf"Samples indexed:?\s+{len(dataset)}", out), out
    app.close_prompt()
    app.open_operator("revsearch: build index")
    app.fill("Brain key", "px")
    app.choose("Index", "exact")
    app.choose("Features", "pixel")
    out = app.execute()
    assert re.search(rf"Samples indexed:?\s+{len(dataset)}", out), out
    dataset.reload()
    kinds = {k: dataset.get_brain_info(k).config.index_kind for k in ("ivf", "px")}
    assert kinds == {"ivf": "kmeans", "px": "exact"}
    assert dataset.get_brain_info("px").config.extractor["type"] == "pixel"


def test_build_with_a_used_brain_key_is_refused_in_the_form(indexes, app, dataset):
    app.open_operator("revsearch: build index")
    assert app.field("Brain key").locator("input").input_value() not in dataset.list_brain_runs()
    app.fill("Brain key", "cnn")
    app.page.get_by_text("already exists: choose another name").wait_for(timeout=20_000)
    app.screenshot("app_build_key_taken")
    execute = app.page.locator('[data-cy="operators-prompt-modal"]').get_by_role("button", name="Execute", exact=True)
    assert execute.is_disabled()


# ---- search by image: every source ----------------------------------------------------------------
def test_search_by_selected_sample(indexes, app, dataset, caltech_files):
    query = label_of(caltech_files[14])
    app.select_tile(query)
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "cnn")
    app.choose("Query", "Selected sample(s)")
    app.fill("Number of results", K)
    app.execute()
    query_id = dict(zip(*dataset.values(["name.label", "id"])))[query]
    labels, dists = expected_search(dataset, "cnn", [query_id])
    assert labels[0] == query
    assert_grid_shows(app, dataset, labels, dists)
    app.screenshot("app_search_selected")


@pytest.mark.parametrize("suffix", [".jpg", ".PNG"])
def test_search_by_uploaded_image(indexes, app, dataset, caltech_files, tmp_path, suffix):
    """The upload box takes the file (FiftyOne matches file-name endings, case-sensitively)."""
    upload = tmp_path / f"query{suffix}"
    cv2.imwrite(str(upload), cv2.imread(caltech_files[9]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "cnn")
    app.choose("Query", "Upload an image")
    app.upload("Image", upload)
    prompt = app.prompt_text()
    assert "allowed" not in prompt, prompt  # FiftyOne's "Only ... file is allowed" rejection
    assert upload.name in prompt
    tag = suffix.lower().replace(".", "_")
    app.screenshot(f"app_upload_form{tag}")
    app.fill("Number of results", K)
    app.execute()
    labels, dists = expected_search(dataset, "cnn", str(upload))
    assert labels[0] == label_of(caltech_files[9])
    assert_grid_shows(app, dataset, labels, dists)
    app.screenshot(f"app_search_upload{tag}")


def test_search_for_edited_copies_of_an_upload(indexes, app, dataset, caltech_files, tmp_path):
    """Mode 'Edited copies' finds the photo a heavily blurred upload was made from, in the order and
    with the relative distances of the SDK's copy search on the same index."""
    upload = tmp_path / "blurred.png"
    cv2.imwrite(str(upload), cv2.GaussianBlur(cv2.imread(caltech_files[14]), (0, 0), 4))
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "cnn")
    app.choose("Query", "Upload an image")
    app.upload("Image", upload)
    app.choose("Mode", "Edited copies (CNN + pixel fusion)")
    app.fill("Number of results", K)
    app.screenshot("app_copy_mode_form")
    app.execute()
    dataset.reload()
    results = dataset.load_brain_results("cnn", cache=False)
    results.use_view(dataset)
    hits = results.copy_search(str(upload), K)
    labels = dict(zip(*dataset.values(["id", "name.label"])))
    expected = [labels[h.key] for h in hits]
    assert expected[0] == label_of(caltech_files[14])
    assert_grid_shows(app, dataset, expected, [h.distance for h in hits])
    app.screenshot("app_copy_mode_result")


def test_search_by_local_path(indexes, app, dataset, caltech_files):
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "ivf")
    app.choose("Query", "Local file path")
    app.fill("Image path on the server", caltech_files[20])
    app.fill("Number of results", K)
    app.execute()
    labels, dists = expected_search(dataset, "ivf", caltech_files[20])
    assert labels[0] == label_of(caltech_files[20])
    assert_grid_shows(app, dataset, labels, dists)


@pytest.fixture
def image_url(caltech_files):
    folder = Path(caltech_files[5]).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{Path(caltech_files[5]).name}"
    server.shutdown()


def test_search_by_url_needs_the_private_network_tick(indexes, app, dataset, caltech_files, image_url):
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "cnn")
    app.choose("Query", "http(s) URL")
    app.fill("Image URL (http or https)", image_url)
    notice = app.execute_refused("tick 'Allow private-network URLs'")
    assert "Traceback" not in notice and "allow_private_urls" not in notice

    url_box = app.field("Image URL (http or https)").locator("input").first  # the form is back, URL kept
    playwright_api.expect(url_box).to_have_value(image_url, timeout=30_000)
    app.tick("Allow private-network URLs")
    app.fill("Number of results", K)
    app.execute()
    labels, dists = expected_search(dataset, "cnn", str(caltech_files[5]))
    assert labels[0] == label_of(caltech_files[5])
    assert_grid_shows(app, dataset, labels, dists)


def test_second_search_covers_the_dataset_unless_told_the_view(indexes, app, dataset, caltech_files):
    """Default target: the whole dataset, even while the grid shows an earlier result."""
    shown = []
    for target, query in (
        ("Whole dataset", caltech_files[0]),
        ("Whole dataset", caltech_files[18]),
        ("Current view only", caltech_files[12]),
    ):
        app.open_operator("revsearch: search by image")
        app.choose("Index (brain key)", "cnn")
        app.choose("Query", "Local file path")
        app.fill("Image path on the server", query)
        app.fill("Number of results", K)
        app.choose("Search in", target)
        app.execute()
        ids = dict(zip(*dataset.values(["name.label", "id"])))
        within = dataset.select([ids[label] for label in shown[-1]]) if target != "Whole dataset" else None
        labels, _ = expected_search(dataset, "cnn", query, samples=within)
        assert app.wait_for_labels(labels) == labels
        shown.append(labels)
    assert not set(shown[1]) <= set(shown[0])  # the second search left the first result
    assert set(shown[2]) == set(shown[1])  # the view-only search re-ranked the second result


# ---- embeddings, PCA, K-means, cluster filter -----------------------------------------------------
def test_pca_and_kmeans_right_after_build_then_filter_by_cluster(indexes, app, dataset):
    app.clear_view()  # these work on the current view: show the whole dataset first
    app.open_operator("revsearch: fit PCA")
    app.choose("Embeddings field", "cnn_embedding")
    app.fill("Components", 8)
    out = app.execute()
    assert "Fraction of variance kept" in out, out
    app.close_prompt()
    app.open_operator("revsearch: fit K-means")
    app.choose("Embeddings field", "cnn_embedding_pca")
    app.fill("Clusters", 4)
    out = app.execute()
    assert "Cluster sizes" in out, out
    app.close_prompt()
    dataset.reload()
    clusters = dataset.values("revsearch_cluster")
    cluster = clusters[0]
    members = sorted(label for label, c in zip(dataset.values("name.label"), clusters) if c == cluster)

    app.open()  # a fresh load shows the new fields in the sidebar
    app.clear_view()
    app.page.locator('[data-cy="sidebar-field-revsearch_cluster"]').click()
    for bound in ("min", "max"):
        box = app.page.get_by_placeholder(bound, exact=True).first
        box.fill(str(cluster))
        box.press("Enter")
    deadline = time.monotonic() + 30
    while sorted(app.labels()) != members and time.monotonic() < deadline:
        app.page.wait_for_timeout(500)
    assert sorted(app.labels()) == members
    app.screenshot("app_cluster_filter")


def test_fit_forms_explain_when_there_is_no_embeddings_field(server, caltech_files):
    bare = fo.Dataset(unique_name("bare"))
    bare.add_samples([fo.Sample(filepath=f, name=fo.Classification(label=label_of(f))) for f in caltech_files[:3]])
    try:
        with browser_page(playwright_api) as page:
            app = App(page, f"{server}/datasets/{bare.name}").open()
            for operator in ("revsearch: fit PCA", "revsearch: fit K-means"):
                app.open_operator(operator)
                app.page.get_by_text("No embeddings field yet", exact=True).wait_for(timeout=30_000)
                assert "revsearch: compute embeddings" in app.prompt_text()
                app.screenshot("app_fit_without_embeddings")
                out = app.execute()  # a user may still press Execute: one line, no traceback
                notice = app.wait_for_notice("no embeddings field yet: run 'revsearch: compute embeddings' first")
                assert "Traceback" not in notice and len(notice.splitlines()) == 1
                assert "Error occurred" in out
                app.close_prompt()
    finally:
        bare.delete()


# ---- near-duplicates ------------------------------------------------------------------------------
def test_near_duplicates_shows_the_copy_pair(indexes, app, dataset, caltech_files):
    """Run once, reopen the form: the histogram of nearest distances is drawn with the threshold line;
    the grid shows the group, and all but one of it carry the keep-one tag."""
    app.clear_view()  # these work on the current view: show the whole dataset first
    app.open_operator("revsearch: find near-duplicates")
    app.choose("Index (brain key)", "px")
    assert "reopen this form to see their histogram" in app.prompt_text()
    app.fill("Threshold (squared L2)", 1)
    out = app.execute()
    assert re.search(r"Samples with a near-duplicate:?\s+2", out), out
    assert re.search(r"Duplicate groups:?\s+1", out) and re.search(r"all but one per group\)?:?\s+1", out), out
    app.close_prompt()
    pair = {"image_0002", "copy_of_image_0002"}
    deadline = time.monotonic() + 30
    while {lab.split("/")[-1] for lab in app.labels()} != pair and time.monotonic() < deadline:
        app.page.wait_for_timeout(500)
    assert {lab.split("/")[-1] for lab in app.labels()} == pair and len(app.labels()) == 2
    app.show_field("tags")
    app.screenshot("app_duplicates_grid")
    tiles = app.grid()
    assert sum("duplicate" in " ".join(tile.values()).split() for tile in tiles) == 1, tiles

    app.open_operator("revsearch: find near-duplicates")
    app.choose("Index (brain key)", "px")
    app.fill("Threshold (squared L2)", 1)
    plot = app.page.locator(PROMPT).locator(".js-plotly-plot")
    plot.wait_for(timeout=30_000)
    bars = plot.locator(".barlayer .point")
    assert bars.count() >= 2  # the zero-distance pair, and the rest far away
    assert plot.locator(".shapelayer path").count() == 1  # the threshold line
    app.screenshot("app_duplicates_histogram")
    app.close_prompt()


# ---- list, inspect, update, delete ----------------------------------------------------------------
def test_list_inspect_update_delete(indexes, app, dataset, caltech_files):
    app.open_operator("revsearch: list indexes")
    out = app.execute()
    for key in ("cnn", "ivf", "px"):
        assert f'"brain_key": "{key}"' in out or f"brain_key: {key}" in out or key in out
    app.close_prompt()

    extra = fo.Sample(filepath=caltech_files[2], name=fo.Classification(label="extra/added"))
    dataset.add_sample(extra)
    app.open_operator("revsearch: inspect index")
    app.choose("Index (brain key)", "px")
    out = app.execute()
    assert re.search(r"Samples not in the index:?\s+1", out), out
    app.close_prompt()

    app.open_operator("revsearch: update index")
    app.choose("Index (brain key)", "px")
    out = app.execute()
    assert re.search(r"Samples added:?\s+1", out), out
    dataset.reload()
    assert extra.id in dataset.load_brain_results("px", cache=False).sample_ids.tolist()
    app.close_prompt()

    app.open_operator("revsearch: delete index")
    app.choose("Index (brain key)", "ivf")
    app.page.locator(PROMPT).get_by_role("checkbox").check(force=True)  # the confirmation
    app.settle()
    app.execute()
    deadline = time.monotonic() + 10
    while "ivf" in dataset.list_brain_runs() and time.monotonic() < deadline:
        time.sleep(0.5)
        dataset.reload()
    assert "ivf" not in dataset.list_brain_runs()
    dataset.delete_samples(extra)


# ---- delegated (scheduled) build ------------------------------------------------------------------
def test_scheduled_build_runs_in_fiftyone_delegated_launch(app, dataset, plugins_dir, tmp_path):
    app.clear_view()  # these work on the current view: show the whole dataset first
    app.open_operator("revsearch: build index")
    app.fill("Brain key", "scheduled")
    app.choose("Index", "exact")
    app.choose("Features", "pixel")
    prompt = app.page.locator('[data-cy="operators-prompt-modal"]')
    prompt.get_by_role("button").last.click()  # the arrow beside Execute: execution options
    app.page.get_by_text("Schedule", exact=True).click()
    prompt.get_by_role("button", name="Schedule", exact=True).click()
    app.page.wait_for_timeout(2000)
    app.screenshot("app_scheduled")
    assert "scheduled" not in dataset.list_brain_runs()

    env = {**subprocess_env(), "FIFTYONE_PLUGINS_DIR": str(plugins_dir)}
    with open(tmp_path / "launch.log", "w") as log:
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("fiftyone")), "delegated", "launch"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:  # the brain run is listed as soon as the build starts: wait for the operation to end
            deadline = time.monotonic() + 180
            while (state := scheduled_build_state(dataset)) not in ExecutionRunState.TERMINAL_STATES:
                assert time.monotonic() < deadline, f"still {state}"
                time.sleep(2)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert state == ExecutionRunState.COMPLETED, (tmp_path / "launch.log").read_text()[-3000:]
    dataset.reload()
    assert "scheduled" in dataset.list_brain_runs()
    assert dataset.load_brain_results("scheduled", cache=False).total_index_size == len(dataset)


def scheduled_build_state(dataset: fo.Dataset) -> str | None:
    """The run state of the build scheduled on ``dataset`` (None before it is queued)."""
    builds = [
        op
        for op in DelegatedOperationService().list_operations(dataset_name=dataset.name)
        if op.operator == URI + "build_index" and op.context.params.get("brain_key") == "scheduled"
    ]
    return builds[-1].run_state if builds else None


# ---- examples/app.py survives a tab reload --------------------------------------------------------
def test_example_app_survives_a_tab_reload(caltech_files, tmp_path, plugins_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for f in caltech_files[:6]:
        shutil.copy(f, folder / f"{Path(f).parent.name}_{Path(f).name}")
    name, port = unique_name("example"), free_port()
    command = [
        sys.executable,
        str(REPO / "examples" / "app.py"),
        str(folder),
        "--name",
        name,
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
    ]
    env = {"FIFTYONE_PLUGINS_DIR": str(plugins_dir)}
    with app_server(tmp_path / "example.log", env, command, port) as (base, proc):
        with browser_page(playwright_api) as page:
            app = App(page, f"{base}/datasets/{name}").open(ready=TILE)  # unlabelled: wait for tiles
            page.reload()
            page.wait_for_timeout(8000)  # longer than FiftyOne's 3 s reconnect window
            app.open(ready=TILE)
            assert page.locator(TILE).count() == 6
            assert proc.poll() is None
            page.close()
            time.sleep(8)  # no tab at all for a while: the App keeps serving
            assert proc.poll() is None
            wait_http(f"{base}/", proc, tmp_path / "example.log", timeout_s=10)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
