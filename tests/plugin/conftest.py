"""Fixtures for the FiftyOne plugin / brain backend tests: a small real Caltech-101 subset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import fiftyone as fo
import pytest

from plugin_helpers import CALTECH, CLASSES, PER_CLASS, REPO, SHARED, SHARED_AVAILABLE


def pytest_collection_modifyitems(config, items):
    """Skip (visibly, with the reason) every plugin test when the team share is absent."""
    if SHARED_AVAILABLE:
        return
    skip = pytest.mark.skip(reason=f"needs Caltech-101 and torch weights under {SHARED} (absent)")
    for item in items:
        if "tests/plugin/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module", autouse=True)
def _browser_per_module():
    """The App tests of a module share one browser (``app_driver.browser_page``); it stops with the
    module, since a running Playwright keeps an event loop marked running in this thread (no other
    module's ``asyncio.run`` could start)."""
    yield
    driver = sys.modules.get("app_driver")
    if driver is not None:
        driver.close_browser()


@pytest.fixture(scope="session")
def caltech_files() -> list[str]:
    """4 classes x 6 images, in a fixed order."""
    return [str(p) for c in CLASSES for p in sorted((CALTECH / c).glob("image_*.jpg"))[:PER_CLASS]]


@pytest.fixture(scope="session")
def plugins_dir(tmp_path_factory) -> Path:
    """A FiftyOne plugins directory containing this repository (as a symlink)."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "revsearch").symlink_to(REPO)
    fo.config.plugins_dir = str(root)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)
    return root
