"""Shared fixtures: real Caltech-101 images and real MobileNetV2 weights from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CALTECH = SHARED / "data" / "caltech101" / "101_ObjectCategories"
TORCH_CACHE = SHARED / "models" / "torch"
MOBILENET_FILE = TORCH_CACHE / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
#: A small fixed subset: 4 visually distinct classes x 6 images.
SUBSET_CLASSES = ("airplanes", "Motorbikes", "sunflower", "watch")
SUBSET_PER_CLASS = 6


def caltech_subset(classes=SUBSET_CLASSES, per_class=SUBSET_PER_CLASS) -> list[Path]:
    if not CALTECH.is_dir():
        pytest.skip(f"Caltech-101 images not found at {CALTECH} (the team share ../shared is absent)")
    return [CALTECH / c / f"image_{i:04d}.jpg" for c in classes for i in range(1, per_class + 1)]


@pytest.fixture(scope="session")
def subset_paths() -> list[Path]:
    return caltech_subset()


@pytest.fixture(scope="session")
def pretrained_mobilenet():
    """MobileNetV2 with real ImageNet weights, loaded the standard torchvision way from TORCH_HOME."""
    if not MOBILENET_FILE.exists():
        pytest.skip(f"pretrained MobileNetV2 weights not found at {MOBILENET_FILE}")
    os.environ.setdefault("TORCH_HOME", str(TORCH_CACHE))
    from revsearch import Embedder, EmbedderConfig

    return Embedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1", pooling="gem", batch_size=16))


def write_edited_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """A near-copy of ``src``: 90% crop, small rotation, brightness change, JPEG quality 60."""
    rng = np.random.default_rng(seed)
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    crop = image[h // 20: h - h // 20, w // 20: w - w // 20]
    rot = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), float(rng.uniform(-5, 5)), 1.0)
    crop = cv2.warpAffine(crop, rot, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REFLECT)
    crop = np.clip(crop.astype(np.float32) * float(rng.uniform(0.85, 1.15)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(dst), crop, [cv2.IMWRITE_JPEG_QUALITY, 60])
    return dst
