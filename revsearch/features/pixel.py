"""Pixel-distance baseline features: the image resized to a small square, flattened."""

from __future__ import annotations

import cv2
import numpy as np

from revsearch.features.pipeline import FeatureExtractor


class PixelFeatures(FeatureExtractor):
    """``size`` x ``size`` x 3 thumbnails as float64 vectors, so squared L2 on them is exact."""

    dtype = np.dtype(np.float64)

    def __init__(self, size: int = 32, batch_size: int = 256):
        if size < 1:
            raise ValueError(f"pixel size must be positive, got {size}")
        self.size = size
        self.dim = size * size * 3
        self.batch_size = batch_size
        self.min_side = size
        self.label = f"thumbnails {size}x{size}"

    def describe(self) -> dict:
        return {"type": "pixel", "size": self.size, "model_id": f"pixel{self.size}", "dim": self.dim}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1).astype(np.float64)
