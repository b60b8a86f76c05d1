"""Shared fixtures: real Caltech-101 images and real MobileNetV2 weights from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import MOBILENET_FILE, caltech_subset


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
