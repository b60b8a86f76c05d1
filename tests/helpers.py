"""Test helpers: where the team share's real images and weights are, a fixed subset, edited copies."""

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

if TORCH_CACHE.is_dir():  # torchvision's standard cache lookup then finds the team's offline weights
    os.environ.setdefault("TORCH_HOME", str(TORCH_CACHE))


def caltech_subset(classes=SUBSET_CLASSES, per_class=SUBSET_PER_CLASS) -> list[Path]:
    if not CALTECH.is_dir():
        pytest.skip(f"Caltech-101 images not found at {CALTECH} (the team share ../shared is absent)")
    return [CALTECH / c / f"image_{i:04d}.jpg" for c in classes for i in range(1, per_class + 1)]


def write_edited_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """A near-copy of ``src``: 90% crop, small rotation, brightness change, JPEG quality 60."""
    rng = np.random.default_rng(seed)
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    crop = image[h // 20 : h - h // 20, w // 20 : w - w // 20]
    rot = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), float(rng.uniform(-5, 5)), 1.0)
    crop = cv2.warpAffine(crop, rot, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REFLECT)
    crop = np.clip(crop.astype(np.float32) * float(rng.uniform(0.85, 1.15)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(dst), crop, [cv2.IMWRITE_JPEG_QUALITY, 60])
    return dst
