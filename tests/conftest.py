"""Shared fixtures: real Caltech-101 images and real MobileNetV2 weights from ../shared; the test tiers.

The fast tier (``pytest -m "not slow"``) is every unit and small integration test in this process;
a test run on every index kind runs its Milvus Lite case in the slow tier (each Lite file starts a
server), while the Milvus modules themselves stay fast. The slow tier adds kills at every write point,
the random operation machines, real Milvus servers, moves between Milvus instances, the ONNX
export, the App in a browser, a fresh ``pip install`` and the checks made in fresh Python processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import MOBILENET_FILE, caltech_subset

#: Test modules in the slow tier (single slow tests carry ``@pytest.mark.slow`` themselves).
SLOW_MODULES = {
    "test_cli_regions.py",
    "test_crash_safety.py",
    "test_index_properties.py",
    "test_index_safety.py",
    "test_install.py",
    "test_lazy_imports.py",
    "test_lite_handover.py",
    "test_move.py",
    "test_server.py",
    "test_resume.py",
    "test_app_browser.py",
    "test_app_user_paths.py",
    "test_brain_contract_at_scale.py",
}


def _milvus_case(item: pytest.Item) -> bool:
    """A parametrised case whose parameters include the Milvus kind, e.g. ``[milvus-cosine]``."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "milvus" in callspec.id.split("-")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or _milvus_case(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def subset_paths() -> list[Path]:
    return caltech_subset()


@pytest.fixture(scope="session")
def pretrained_mobilenet():
    """MobileNetV2 with real ImageNet weights, loaded the standard torchvision way from TORCH_HOME."""
    if not MOBILENET_FILE.exists():
        pytest.skip(f"pretrained MobileNetV2 weights not found at {MOBILENET_FILE}")
    from revsearch import Embedder, EmbedderConfig

    return Embedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1", pooling="gem", batch_size=16))
