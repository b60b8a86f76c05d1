"""Compute (once) and cache the descriptors the quality benchmarks compare.

One forward pass per image gives both average- and GeM-pooled vectors of the same trunk; pixel
thumbnails come from the same decoder. Cached as .npz in bench/cache/ keyed by the image list.
"""

from __future__ import annotations

import hashlib

import numpy as np
from common import CACHE

from revsearch import Embedder, EmbedderConfig, PixelFeatures
from revsearch.embedder import gem_pool, l2_rows
from revsearch.extractor import FeatureExtractor


class BothPoolings(Embedder):
    """An Embedder whose forward returns [avg | gem] concatenated (one pass, two descriptors)."""

    def forward(self, batch: np.ndarray) -> np.ndarray:
        f = self.feature_maps(batch)
        return np.concatenate([l2_rows(f.mean(axis=(2, 3))), l2_rows(gem_pool(f, self.config.gem_p))], axis=1)


def _cached(name: str, paths: list[str], extractor: FeatureExtractor) -> np.ndarray:
    digest = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:12]
    file = CACHE / f"{name}_{digest}.npy"
    if file.exists():
        return np.load(file)
    batch = extractor.embed_paths(paths)
    if batch.failures:
        raise RuntimeError(f"{len(batch.failures)} images failed: {list(batch.failures.items())[:3]}")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(file, batch.vectors)
    return batch.vectors


def cnn_features(paths: list[str], backbone: str, weights: str | None) -> dict[str, np.ndarray]:
    """{'avg': (n, d), 'gem': (n, d)} for a backbone."""
    model = BothPoolings(EmbedderConfig(backbone=backbone, weights=weights, batch_size=32))
    both = _cached(f"{backbone}_{weights}", paths, model)
    return {"avg": both[:, : model.dim], "gem": both[:, model.dim:]}


def pixel_features(paths: list[str], size: int = 32) -> np.ndarray:
    return _cached(f"pixel{size}", paths, PixelFeatures(size))
