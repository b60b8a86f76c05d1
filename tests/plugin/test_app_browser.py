"""End to end: the FiftyOne App (on localhost) sorts the grid by similarity with a revsearch index.

Drives Debian's Chromium headless through Playwright (no browser download). Screenshots are
saved as ``test-artifacts/app_sort_by_similarity.png`` and ``test-artifacts/app_native_button.png``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fiftyone as fo
import pytest

from app_driver import CHROMIUM, CHROMIUM_ARGS
from plugin_helpers import REPO, subprocess_env, unique_name
from revsearch import PixelFeatures
from revsearch.fiftyone import tools

ARTIFACT = REPO / "test-artifacts" / "app_sort_by_similarity.png"
NATIVE_ARTIFACT = REPO / "test-artifacts" / "app_native_button.png"
SHOWN = 10  # grid tiles compared with the expected order

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip package 'playwright' not installed (.ci/plugin_setup.sh installs it)"
)
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dataset(caltech_files, tmp_path):
    """Samples labelled with a unique name (shown on each grid tile), indexed in Milvus Lite."""
    ds = fo.Dataset(unique_name("app"))
    ds.add_samples(
        [
            fo.Sample(filepath=f, name=fo.Classification(label=f"{Path(f).parent.name}/{Path(f).stem}"))
            for f in caltech_files
        ]
    )
    tools.build_index(ds, "rev", "milvus", extractor=PixelFeatures(16), uri=str(tmp_path / "app.db"))
    yield ds
    ds.delete()


@pytest.fixture
def app_url(dataset, tmp_path):
    """A FiftyOne App server for ``dataset`` in a child process (our package importable there)."""
    port = free_port()
    env = {**subprocess_env(), "FIFTYONE_DO_NOT_TRACK": "true"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"App server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/datasets/{dataset.name}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def grid_labels(page) -> list[str]:
    """Tile labels in reading order (top to bottom, left to right)."""
    tiles = page.locator('[data-cy="looker"]')
    found = []
    for i in range(tiles.count()):
        box = tiles.nth(i).bounding_box()
        tag = tiles.nth(i).locator('[data-cy="tag-name"]')
        if box and tag.count():
            found.append((round(box["y"]), box["x"], tag.first.inner_text()))
    return [label for _, _, label in sorted(found)]


def test_app_sort_by_similarity_orders_the_grid(dataset, app_url):
    """The App server runs the SortBySimilarity stage of a saved view against our Milvus Lite index."""
    query_row = 8
    query_id = dataset.values("id")[query_row]
    sorted_view = dataset.sort_by_similarity(query_id, k=len(dataset), brain_key="rev")
    expected = sorted_view.values("name.label")
    dataset.save_view("similar", sorted_view)

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            page.wait_for_selector('[data-cy="tag-name"]', timeout=120_000)
            initial = grid_labels(page)
            page.goto(f"{app_url}?view=similar")
            shown = sorted_grid(page, expected, ARTIFACT, timeout_s=90)
        finally:
            browser.close()
    check_sorted(dataset, initial, shown, expected, dataset.values("name.label")[query_row])


def sorted_grid(page, expected: list[str], artifact, timeout_s: float = 60) -> list[str]:
    """Wait for the grid to show ``expected``, screenshot it to ``artifact``, return its labels."""
    wait_for_grid(page, expected, timeout_s=timeout_s)
    page.wait_for_timeout(1000)  # let thumbnails finish drawing for the screenshot
    artifact.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(artifact))
    return grid_labels(page)


def check_sorted(dataset, initial: list[str], shown: list[str], expected: list[str], query_label: str) -> None:
    """The grid started in dataset order and now shows the similarity order, the query first."""
    assert initial[:SHOWN] == dataset.values("name.label")[:SHOWN]
    assert shown[:SHOWN] == expected[:SHOWN]
    assert shown[0] == query_label
    assert shown[:SHOWN] != initial[:SHOWN]


def wait_for_grid(page, expected: list[str], timeout_s: float = 60) -> list[str]:
    """Poll the grid until its first ``SHOWN`` labels are ``expected``'s; returns what it shows."""
    deadline = time.monotonic() + timeout_s
    while grid_labels(page)[:SHOWN] != expected[:SHOWN] and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    return grid_labels(page)


def test_app_native_sort_button_and_similarity_panel(dataset, app_url):
    """Select a tile, App's sort-by-similarity button, "Show similar samples", then the Similarity
    Search panel's "Show results": the grid takes the ``sort_by_similarity`` order of our index.

    "Show results" sits inside the panel's run card, a dnd-kit sortable wrapper rendered as
    ``<div role="button" aria-disabled="true" aria-roledescription="sortable">`` (dragging off).
    The button itself is enabled (the App disables it only while ``run.status != "completed"``),
    but Playwright's actionability check inherits ``aria-disabled`` from ancestors and reports
    "element is not enabled" (for the built-in sklearn backend too). So the test asserts the
    button's own ``disabled`` property and then clicks it without the actionability check.
    """
    query_row = 8
    query_id = dataset.values("id")[query_row]
    query_label = dataset.values("name.label")[query_row]
    expected = dataset.sort_by_similarity(query_id, k=len(dataset), brain_key="rev").values("name.label")

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            page.wait_for_selector('[data-cy="tag-name"]', timeout=120_000)
            dismiss = page.get_by_role("button", name="Dismiss")  # "Explore Enterprise" popover
            try:
                dismiss.click(timeout=5000)
            except playwright_api.Error:
                page.keyboard.press("Escape")
            initial = grid_labels(page)

            tile = (
                page.locator('[data-cy="looker"]')
                .filter(has=page.locator('[data-cy="tag-name"]', has_text=query_label))
                .first
            )
            tile.hover()
            box = tile.bounding_box()
            page.mouse.click(box["x"] + 18, box["y"] + 18)  # the tile's selection checkbox (top left)
            page.wait_for_function(
                "() => document.querySelectorAll('input[type=checkbox]:checked').length > 0", timeout=10_000
            )

            page.locator('[data-cy="action-sort-by-similarity"]').click()
            page.get_by_text("Show similar samples").click()  # runs the panel's similarity_search operator

            show = page.get_by_label("Show results")
            show.first.wait_for(state="visible", timeout=60_000)
            page.get_by_text("Completed").first.wait_for(timeout=60_000)
            assert show.count() == 1
            deadline = time.monotonic() + 30
            while show.evaluate("e => e.disabled") and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert show.evaluate("e => e.disabled") is False
            show.click(force=True)  # see the docstring: an aria-disabled ancestor, not a disabled button

            shown = sorted_grid(page, expected, NATIVE_ARTIFACT)
        finally:
            browser.close()
    check_sorted(dataset, initial, shown, expected, query_label)
