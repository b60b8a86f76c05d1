"""Search inside images, clicked in the real App (headless Debian Chromium via Playwright): build an
index with *Also index regions*, upload an object crop with *Images that contain it*, and see the photo
it was pasted into first with the matched region boxed; then a box typed on the selected sample.
Screenshots go to ``test-artifacts/app_regions_*.png``.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import fiftyone as fo
import pytest

from app_driver import CHROMIUM, App, app_server, browser_page
from plugin_helpers import unique_name
from revsearch.features.decode import load_image
from revsearch.fiftyone.region_query import REGION_FIELD

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip package 'playwright' not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent: .ci/plugin_setup.sh could not install Debian's chromium", allow_module_level=True)
pytestmark = pytest.mark.slow
PASTED = [0.45, 0.45, 0.5, 0.5]


@pytest.fixture(scope="module")
def scene(caltech_files, tmp_path_factory):
    """A Leopards photo pasted into the bottom right of an airplane photo; the dataset holds the other
    photos (not the leopard) and then the composite, each tile labelled by name."""
    folder = tmp_path_factory.mktemp("regions-app")
    leopard = next(f for f in caltech_files if "Leopards" in f)
    plane = next(f for f in caltech_files if "airplanes" in f)
    background, obj = load_image(plane), load_image(leopard)
    h, w = background.shape[:2]
    x, y, bw, bh = int(PASTED[0] * w), int(PASTED[1] * h), int(PASTED[2] * w), int(PASTED[3] * h)
    background[y : y + bh, x : x + bw] = cv2.resize(obj, (bw, bh), interpolation=cv2.INTER_AREA)
    composite, crop = folder / "composite.jpg", folder / "leopard.png"
    cv2.imwrite(str(composite), cv2.cvtColor(background, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(crop), cv2.cvtColor(obj, cv2.COLOR_RGB2BGR))
    ds = fo.Dataset(unique_name("regions-app"))
    files = [f for f in caltech_files if f != leopard] + [str(composite)]  # last: first only when found
    ds.add_samples([fo.Sample(filepath=f, name=fo.Classification(label=Path(f).stem)) for f in files])
    yield ds, crop
    ds.delete()


@pytest.fixture(scope="module")
def server(scene, plugins_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with app_server(log, {"FIFTYONE_PLUGINS_DIR": str(plugins_dir)}) as (base, _):
        yield base


def results_grid(app: App, k: int, timeout_s: float = 90) -> list[str]:
    """The grid's labels once it shows the ``k`` results of a search (not the whole dataset before it)."""
    deadline = app.page.evaluate("Date.now()") + timeout_s * 1000
    while len(app.labels()) != k and app.page.evaluate("Date.now()") < deadline:
        app.page.wait_for_timeout(500)
    return app.labels()


def test_build_with_regions_then_find_the_photo_that_contains_an_uploaded_crop(scene, server):
    ds, crop = scene
    with browser_page(playwright_api) as page:
        app = App(page, f"{server}/datasets/{ds.name}").open()
        app.open_operator("revsearch: build index")
        app.fill("Brain key", "reg")
        app.choose("Index", "exact")
        app.tick("Also index regions")
        out = app.execute()
        assert re.search(rf"Samples indexed:?\s+{len(ds)}", out), out
        app.close_prompt()
        ds.reload()
        assert ds.get_brain_info("reg").config.regions is True

        app.open_operator("revsearch: search by image")
        app.choose("Index (brain key)", "reg")
        app.choose("Query", "Upload an image")
        app.upload("Image", crop)
        app.choose("Mode", "Images that contain it (regions)")
        app.fill("Number of results", 5)
        app.screenshot("app_regions_form")
        app.execute()
        labels = results_grid(app, 5)
        box = page.get_by_text(REGION_FIELD, exact=True).first.locator(
            "xpath=ancestor::*[.//input[@type='checkbox']][1]//input[@type='checkbox']"
        )
        box.first.check(force=True)  # draw the matched regions on the tiles
        page.wait_for_timeout(1500)
        app.screenshot("app_regions_result")
        assert labels[0] == "composite" and len(labels) == 5, labels
        ds.reload()
        match = ds.match(fo.ViewField("name.label") == "composite").first()[REGION_FIELD]
        assert isinstance(match, fo.Detection)

        app.clear_view()
        app.select_tile("composite")
        app.open_operator("revsearch: search by image")
        app.choose("Index (brain key)", "reg")
        app.choose("Query", "Selected sample(s)")
        app.choose("Mode", "Images that contain it (regions)")
        app.fill("Box (x, y, width, height)", "1.2, 0.1, 0.3")
        assert "Give four numbers" in app.prompt_text()  # checked in the form, before Execute
        app.fill("Box (x, y, width, height)", ", ".join(map(str, PASTED)))
        app.fill("Number of results", 3)
        app.execute()
        labels = results_grid(app, 3)
        assert labels[0] == "composite", labels
