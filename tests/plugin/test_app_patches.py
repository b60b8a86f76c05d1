"""Object similarity clicked in the real App (headless Debian Chromium via Playwright): build an index of
a detections field with the build form, open the patches view, select a patch and sort by similarity
through the App's own similarity menu and through *search by image*. Screenshots go to
``test-artifacts/app_patches_*.png``.
"""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest

from app_driver import CHROMIUM, TILE, App, app_server, browser_page
from plugin_helpers import unique_name

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip package 'playwright' not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent: .ci/plugin_setup.sh could not install Debian's chromium", allow_module_level=True)
pytestmark = pytest.mark.slow
TAG = '[data-cy="tag-gt"]'


@pytest.fixture(scope="module")
def dataset(caltech_files):
    """12 Caltech photos with 2 boxes each, every box labelled uniquely (drawn on its patch tile); a
    saved view of the boxes' patches."""
    rng = np.random.default_rng(3)
    ds = fo.Dataset(unique_name("patches-app"))
    samples = []
    for i, path in enumerate(caltech_files[:12]):
        boxes = []
        for j in range(2):
            w, h = rng.uniform(0.3, 0.6, size=2)
            box = [rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h]
            boxes.append(fo.Detection(label=f"obj{i:02d}-{j}", bounding_box=box))
        samples.append(fo.Sample(filepath=path, gt=fo.Detections(detections=boxes)))
    ds.add_samples(samples)
    ds.save_view("boxes", ds.to_patches("gt"))
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def server(dataset, plugins_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with app_server(log, {"FIFTYONE_PLUGINS_DIR": str(plugins_dir)}) as (base, _):
        yield base


def patch_labels(app: App) -> list[str]:
    """The label drawn on each patch tile, in reading order."""
    found = app.page.eval_on_selector_all(
        TILE,
        """(tiles, tag) => tiles.flatMap((tile) => {
            const box = tile.getBoundingClientRect(), label = tile.querySelector(tag);
            return box.width && box.height && label ? [[Math.round(box.y), box.x, label.innerText]] : [];
        })""",
        TAG,
    )
    return [label for _, _, label in sorted(found, key=lambda f: (f[0], f[1]))]


def wait_for_patch_labels(app: App, expected: list[str], timeout_s: float = 60) -> list[str]:
    deadline = app.page.evaluate("Date.now()") + timeout_s * 1000
    while patch_labels(app)[: len(expected)] != expected and app.page.evaluate("Date.now()") < deadline:
        app.page.wait_for_timeout(500)
    return patch_labels(app)


def select_patch(app: App, label: str) -> None:
    tile = app.page.locator(TILE).filter(has=app.page.locator(TAG, has_text=label)).first
    tile.hover()
    box = tile.bounding_box()
    app.page.mouse.click(box["x"] + 18, box["y"] + 18)
    app.page.wait_for_function(
        "() => document.querySelectorAll('input[type=checkbox]:checked').length > 0", timeout=10_000
    )


def test_build_an_object_index_and_sort_a_patches_view_by_a_selected_patch(dataset, server):
    with browser_page(playwright_api) as page:
        app = App(page, f"{server}/datasets/{dataset.name}").open(ready=TILE)
        app.open_operator("revsearch: build index")
        app.fill("Brain key", "objects")
        app.choose("Index", "exact")
        app.choose("What to index", "gt")
        assert "Square crops" in app.prompt_text() and "Copy-mode thumbnails" not in app.prompt_text()
        app.choose("Features", "pixel")
        app.screenshot("app_patches_build_form")
        out = app.execute()
        assert "24" in out, out  # 12 images x 2 objects
        app.close_prompt()
        dataset.reload()  # the run was made by the App server
        results = dataset.load_brain_results("objects")
        assert results.config.patches_field == "gt" and results.total_index_size == 24

        view = dataset.load_saved_view("boxes")
        query_row = 7
        query_id, query_label = view.values("id")[query_row], view.values("gt.label")[query_row]
        expected = view.sort_by_similarity(query_id, k=len(view), brain_key="objects").values("gt.label")
        assert expected[0] == query_label

        # the App's own sort-by-similarity menu on the patches view
        app.open(f"{server}/datasets/{dataset.name}?view=boxes", ready=TAG)
        select_patch(app, query_label)
        page.locator('[data-cy="action-sort-by-similarity"]').click()
        page.get_by_text("Show similar samples").click()
        show = page.get_by_label("Show results")
        show.first.wait_for(state="visible", timeout=60_000)
        page.get_by_text("Completed").first.wait_for(timeout=60_000)
        page.wait_for_function("b => !b.disabled", arg=show.first.element_handle(), timeout=30_000)
        show.first.click(force=True)  # an aria-disabled sortable wrapper: see test_app_browser.py
        shown = wait_for_patch_labels(app, expected[:6])
        app.screenshot("app_patches_native_sort")
        assert shown[:6] == expected[:6], (shown, expected)

        # search by image with the selected patch, in the current (patches) view
        app.open(f"{server}/datasets/{dataset.name}?view=boxes", ready=TAG)
        select_patch(app, query_label)
        app.open_operator("revsearch: search by image")
        app.choose("Index (brain key)", "objects")
        app.choose("Query", "Selected sample(s)")
        app.fill("Number of results", 5)
        app.choose("Search in", "Current view only")
        app.execute()
        shown = wait_for_patch_labels(app, expected[:5])
        app.screenshot("app_patches_search_by_image")
        assert shown[:5] == expected[:5], (shown, expected)
