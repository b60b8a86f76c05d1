"""Compute (once) and cache the descriptors the quality benchmarks compare.

One forward pass per image gives both average- and GeM-pooled vectors of the same trunk; pixel
thumbnails come from the same decoder. Cached as .npz in bench/cache/ keyed by the image list.
"""

from __future__ import annotations

import hashlib

import numpy as np
from common import CACHE

from revsearch import Embedder, EmbedderConfig, PixelFeatures
from revsearch.features.cnn import gem_pool
from revsearch.features.multiscale import MultiScaleEmbedder
from revsearch.features.pca import l2_normalize
from revsearch.features.pipeline import FeatureExtractor


class BothPoolings(Embedder):
    """An Embedder whose forward returns [avg | gem] concatenated (one pass, two descriptors)."""

    def forward(self, batch: np.ndarray) -> np.ndarray:
        f = self.feature_maps(batch)
        return np.concatenate([l2_normalize(f.mean(axis=(2, 3))), l2_normalize(gem_pool(f, self.config.gem_p))], axis=1)


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
    return {"avg": both[:, : model.dim], "gem": both[:, model.dim :]}


def pixel_features(paths: list[str], size: int = 32) -> np.ndarray:
    return _cached(f"pixel{size}", paths, PixelFeatures(size))


#: Scales cached per image for the multi-scale experiments (sqrt 2 up-scales, the rest as in Radenović et al.).
CACHED_SCALES = (2**0.5, 1.0, 2**-0.5, 0.5)


class PerScale(MultiScaleEmbedder):
    """A MultiScaleEmbedder whose forward returns every scale's unit vector side by side (B, S * dim)."""

    def forward(self, batch: np.ndarray) -> np.ndarray:
        per = self.per_scale(batch)
        return per.transpose(1, 0, 2).reshape(len(batch), -1)


def multiscale_features(
    paths: list[str], backbone: str = "mobilenet_v2", weights: str | None = "IMAGENET1K_V1"
) -> dict[float, np.ndarray]:
    """{scale: (n, dim) GeM unit vectors} for each of CACHED_SCALES (one cached pass for all)."""
    model = PerScale(EmbedderConfig(backbone=backbone, weights=weights, batch_size=32), scales=CACHED_SCALES)
    flat = _cached(f"ms_{backbone}_{weights}", paths, model)
    per = flat.reshape(len(paths), len(CACHED_SCALES), model.dim)
    return {s: per[:, i] for i, s in enumerate(CACHED_SCALES)}
