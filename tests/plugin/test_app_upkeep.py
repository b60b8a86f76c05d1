"""Keeping indexes in shape, clicked in the real App (headless Debian Chromium via Playwright): stale
indexes announced and updated before a search, one embeddings field per index, weights present
offline by default, tables for cluster sizes and the index list, confirmed deletes, form checks.
Screenshots go to ``test-artifacts/app_upkeep_*.png``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import fiftyone as fo
import pytest

from app_driver import CHROMIUM, PROMPT, App, app_server, browser_page
from plugin_helpers import CALTECH, unique_name
from revsearch.features.factory import make_extractor
from revsearch.fiftyone import tools

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip package 'playwright' not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent: .ci/plugin_setup.sh could not install Debian's chromium", allow_module_level=True)
pytestmark = pytest.mark.slow


def label_of(path: str) -> str:
    return f"{Path(path).parent.name}/{Path(path).stem}"


@pytest.fixture(scope="module")
def dataset(caltech_files):
    """12 Caltech photos, each tile labelled by name, in a pixel index 'px'."""
    ds = fo.Dataset(unique_name("upkeep"))
    ds.add_samples([fo.Sample(filepath=f, name=fo.Classification(label=label_of(f))) for f in caltech_files[:12]])
    tools.build_index(ds, "px", "exact", make_extractor("pixel"))
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def server(dataset, plugins_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with app_server(log, {"FIFTYONE_PLUGINS_DIR": str(plugins_dir)}) as (base, _):
        yield base


@pytest.fixture
def app(server, dataset):
    with browser_page(playwright_api) as page:
        yield App(page, f"{server}/datasets/{dataset.name}").open()


def rows(app: App) -> list[list[str]]:
    """The cells of the table in the prompt's output, row by row."""
    table = app.page.locator(PROMPT).locator("table tbody tr")
    table.first.wait_for(timeout=30_000)
    return [[c.strip() for c in r.locator("td").all_inner_texts()] for r in table.all()]


def test_search_says_the_index_is_stale_and_updates_it_first(app, dataset, caltech_files):
    added = fo.Sample(filepath=caltech_files[20], name=fo.Classification(label=label_of(caltech_files[20])))
    dataset.add_sample(added)
    dataset.delete_samples(dataset.first())
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "px")
    app.page.get_by_text("1 samples not indexed, 1 indexed samples deleted", exact=False).wait_for(timeout=20_000)
    assert app.field("Update the index first").get_by_role("checkbox").is_checked()  # 1 to embed: ticked
    app.choose("Query", "Local file path")
    app.fill("Image path on the server", caltech_files[20])
    app.fill("Number of results", 3)
    app.screenshot("app_upkeep_stale_search")
    app.execute()
    assert app.wait_for_labels([added.name.label])[0] == added.name.label
    dataset.reload()
    assert not tools.index_status(dataset.load_brain_results("px", cache=False))["stale"]


def test_default_build_runs_offline_keeps_its_own_field_and_fit_kmeans_shows_a_table(app, dataset):
    app.clear_view()  # the build indexes the current view: show the whole dataset first
    app.open_operator("revsearch: build index")
    app.fill("Brain key", "mine")
    app.choose("Index", "exact")
    field = app.field("Backbone")
    assert "mobilenet_v2 (weights present)" in field.inner_text(), field.inner_text()
    assert app.field("Weights").locator("input").input_value() == "IMAGENET1K_V1"
    assert app.field("Keep embeddings in field").locator("input").input_value() == "mine_embedding"
    app.screenshot("app_upkeep_build_form")
    out = app.execute()
    assert re.search(rf"Samples indexed:?\s+{len(dataset)}", out), out
    app.close_prompt()

    app.clear_view()
    app.open_operator("revsearch: fit K-means")
    app.choose("Embeddings field", "mine_embedding")
    app.page.get_by_text("kept by the build of index 'mine'", exact=False).wait_for(timeout=20_000)
    app.fill("Clusters", 11)
    app.execute()
    shown = rows(app)
    app.screenshot("app_upkeep_kmeans_table")
    assert [r[0] for r in shown] == [str(i) for i in range(11)]  # numeric order: 10 after 9
    assert sum(int(r[1]) for r in shown) == len(dataset)
    app.close_prompt()

    app.open_operator("revsearch: list indexes")
    app.execute()
    listed = {r[0]: r for r in rows(app)}
    app.screenshot("app_upkeep_list_table")
    assert {"px", "mine"} <= set(listed) and listed["mine"][1:3] == ["ready", "exact"], listed


def test_delete_asks_to_confirm_naming_the_index_and_says_what_it_deleted(app, dataset):
    tools.build_index(dataset, "gone", "exact", make_extractor("pixel"))
    app.open_operator("revsearch: delete index")
    execute = app.page.locator(PROMPT).get_by_role("button", name="Execute", exact=True)
    app.settle()
    assert execute.is_disabled() and "Yes, delete" not in app.prompt_text()  # nothing chosen for the user
    app.choose("Index (brain key)", "gone")
    question = f"Yes, delete index 'gone' (exact, pixel 32x32 thumbnails, 3072-d, {len(dataset)} samples)"
    app.page.get_by_text(question).wait_for(timeout=20_000)
    assert execute.is_disabled()
    app.screenshot("app_upkeep_delete_confirm")
    app.page.locator(PROMPT).get_by_role("checkbox").check(force=True)
    app.settle()
    out = app.execute()
    assert "Deleted index 'gone'" in out, out
    dataset.reload()
    assert "gone" not in dataset.list_brain_runs()


def test_forms_check_bounds_and_copy_mode_advice_before_execute(app, dataset):
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "px")
    app.choose("Mode", "Edited copies (CNN + pixel fusion)")
    app.page.get_by_text("build an index with Features = cnn", exact=False).wait_for(timeout=20_000)
    assert "Copy-mode thumbnails" not in app.prompt_text()
    app.choose("Mode", "Similar images")
    app.fill("Number of results", 1)
    assert "greater than" not in app.prompt_text() and "Must be at least" not in app.prompt_text()
    app.fill("Number of results", 0)
    app.page.get_by_text("Must be at least 1").wait_for(timeout=20_000)
    app.screenshot("app_upkeep_bounds")


def start_exact_build(app: App, brain_key: str, batch_size: int) -> None:
    """Fill the build form (exact index, small batches) and click Execute without waiting for the end."""
    app.open_operator("revsearch: build index")
    app.fill("Brain key", brain_key)
    app.choose("Index", "exact")
    app.fill("Batch size", batch_size)
    app.page.locator(PROMPT).get_by_role("button", name="Execute", exact=True).click()


def test_build_shows_counts_and_time_left_while_it_runs(server):
    """A CNN build of 60 photos in small batches: the App shows how many are embedded and the time left."""
    files = sorted(str(p) for p in (CALTECH / "Motorbikes").glob("image_*.jpg"))[:60]
    ds = fo.Dataset(unique_name("progress"))
    ds.add_samples([fo.Sample(filepath=f, name=fo.Classification(label=label_of(f))) for f in files])
    try:
        with browser_page(playwright_api) as page:
            app = App(page, f"{server}/datasets/{ds.name}").open()
            start_exact_build(app, "big", batch_size=2)
            shown = page.wait_for_function(  # read in the page: the next batch replaces it within a second
                r"() => (document.body.innerText.match(/embedded \d+\/60 images, ~\d+ (s|min) left/) || [null])[0]",
                timeout=120_000,
                polling="raf",
            ).json_value()
            app.screenshot("app_upkeep_build_progress")
            out = app.wait_done(300)
        assert int(re.search(r"embedded (\d+)/60", shown).group(1)) < 60, shown
        assert re.search(r"Samples indexed:?\s+60", out), out
        ds.reload()
        assert ds.load_brain_results("big").total_index_size == 60
    finally:
        ds.delete()


def test_a_build_still_running_after_a_reload_is_listed_with_its_progress(server, tmp_path):
    """A CNN build goes on in the server when its tab reloads: *list indexes* shows it, "building:
    24/60 images, started 9 s ago", until it ends. Its images are 12-megapixel PNGs (links to one file),
    slow to decode whatever the CPU, so that the build still runs after the reload."""
    photo = sorted((CALTECH / "Motorbikes").glob("image_*.jpg"))[0]
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(photo)), (4000, 3000)), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    files = [tmp_path / f"copy_{i:03d}.png" for i in range(60)]
    for f in files:
        f.symlink_to(big)
    ds = fo.Dataset(unique_name("running"))
    ds.add_samples([fo.Sample(filepath=str(f), name=fo.Classification(label=f.stem)) for f in files])
    try:
        with browser_page(playwright_api) as page:
            app = App(page, f"{server}/datasets/{ds.name}").open()
            start_exact_build(app, "big", batch_size=4)
            page.wait_for_function(r"() => /embedded \d+\/60 images/.test(document.body.innerText)", timeout=120_000)
            app.open()  # the tab reloads: the build's dialog is gone, the build goes on in the server
            app.open_operator("revsearch: list indexes")
            app.execute()
            listed = {r[0]: r for r in rows(app)}
            app.screenshot("app_upkeep_running_build")
        assert re.fullmatch(r"building: \d+/60 images, started \d+ s ago", listed["big"][1]), listed
        assert listed["big"][2] == "exact", listed
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and ("big" not in ds.list_brain_runs() or ds.info.get("revsearch_building")):
            time.sleep(1)
            ds.reload()
        assert not ds.info.get("revsearch_building")  # the build ended and took its marker away
        assert ds.load_brain_results("big").total_index_size == 60
    finally:
        ds.delete()


def test_search_flags_a_missing_path_then_shows_pixel_distances_per_pixel_value(app, dataset, caltech_files):
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "px")
    app.choose("Query", "Local file path")
    app.fill("Image path on the server", "/no/such/photo.jpg")
    app.page.get_by_text("No file at /no/such/photo.jpg on the server").wait_for(timeout=20_000)
    assert app.page.locator(PROMPT).get_by_role("button", name="Execute", exact=True).is_disabled()
    app.fill("Image path on the server", caltech_files[3])
    app.fill("Number of results", 4)
    app.execute()
    app.wait_for_labels([label_of(caltech_files[3])])
    app.show_field("revsearch_dist")
    app.page.wait_for_function("() => document.querySelectorAll('[data-cy=\"tag-revsearch_dist\"]').length >= 4")
    shown = [float(drawn["revsearch_dist"]) for drawn in app.grid()]
    app.screenshot("app_upkeep_pixel_distances")
    dataset.reload()
    stored = dict(zip(dataset.values("name.label"), dataset.values("revsearch_dist")))
    assert shown[0] == 0 and all(0 < d < 1 for d in shown[1:]), shown
    assert shown == pytest.approx([stored[label] for label in app.labels()], abs=1e-3)


def test_an_error_is_one_line_and_the_form_reopens_with_the_input_kept(app, tmp_path):
    """A file that exists but is no image passes the form's checks and fails in execute: one error
    notice, and the form opens again with what the user typed."""
    bad = tmp_path / "notes.jpg"
    bad.write_text("meeting notes, not a photo")
    app.open_operator("revsearch: search by image")
    app.choose("Index (brain key)", "px")
    app.choose("Query", "Local file path")
    app.fill("Image path on the server", str(bad))
    app.fill("Number of results", 3)
    notice = app.execute_refused("notes.jpg")
    assert "Traceback" not in notice and len(notice.splitlines()) == 1, notice
    expect = playwright_api.expect
    expect(app.field("Image path on the server").locator("input").first).to_have_value(str(bad), timeout=30_000)
    expect(app.field("Number of results").locator("input").first).to_have_value("3")
    assert app.field("Query").get_by_role("radio", name="Local file path", exact=True).is_checked()
    app.screenshot("app_upkeep_error_reopens_the_form")
