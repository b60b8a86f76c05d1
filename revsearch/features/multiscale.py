"""Multi-scale CNN descriptors (Radenović et al. 2018): the image pooled and L2-normalised at several
input scales as in :class:`~revsearch.features.cnn.Embedder`; their mean is normalised again."""

from __future__ import annotations

import math

import cv2
import numpy as np

from revsearch.features.cnn import Embedder, EmbedderConfig
from revsearch.features.pca import l2_normalize
from revsearch.features.trunks import OnnxTrunk, TorchTrunk, export_cached

#: Literature-standard scales (relative to ``image_size``).
DEFAULT_SCALES = (1.0, 1 / math.sqrt(2), 0.5)


def scale_sizes(image_size: int, scales: tuple[float, ...]) -> list[int]:
    """Square input side for each scale (at least 32 px, the trunk's total stride)."""
    return [max(32, round(image_size * s)) for s in scales]


class MultiScaleEmbedder(Embedder):
    """An :class:`Embedder` whose descriptor is the mean over ``scales`` (1.0 = ``image_size``); images are
    resized as the single-scale embedder does, so the scale-1 descriptor equals :class:`Embedder`'s."""

    def __init__(self, config: EmbedderConfig | None = None, scales: tuple[float, ...] = DEFAULT_SCALES, **overrides):
        super().__init__(config, **overrides)
        scales = tuple(float(s) for s in scales)
        if not scales or any(not (0 < s <= 4) for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be distinct numbers in (0, 4], got {scales!r}")
        self.scales = scales
        self.sizes = scale_sizes(self.config.image_size, scales)
        self.min_side = max(self.sizes)
        self.trunks = {}
        for size in self.sizes:
            if size == self.config.image_size:
                self.trunks[size] = self.trunk
            elif self.config.runtime == "torch":
                self.trunks[size] = TorchTrunk(self.model)
            else:
                path = export_cached(lambda: self.model, size, self.config.backbone, self.digest)
                self.trunks[size] = OnnxTrunk(path)
        self.label = f"embed {self.config.backbone} x{len(scales)} scales"

    def describe(self) -> dict:
        return {**super().describe(), "scales": list(self.scales)}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The image at every scale's side, flattened and concatenated (one row of a batch)."""
        return np.concatenate([cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA).ravel() for s in self.sizes])

    def _unpack(self, batch: np.ndarray) -> list[np.ndarray]:
        """(B, sum of s*s*3) uint8 rows from :meth:`prepare` -> one (B, s, s, 3) array per scale."""
        parts = np.split(batch, np.cumsum([s * s * 3 for s in self.sizes])[:-1], axis=1)
        return [part.reshape(len(batch), s, s, 3) for s, part in zip(self.sizes, parts)]

    def per_scale(self, batch: np.ndarray) -> np.ndarray:
        """Rows from :meth:`prepare` -> (n_scales, B, dim) unit vectors, one per scale."""
        scales = zip(self.sizes, self._unpack(batch))
        out = [self.pool(self.trunks[s](self.network_input(np.ascontiguousarray(images)))) for s, images in scales]
        return np.stack(out).astype(np.float32)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Rows from :meth:`prepare` -> (B, dim) float32 unit vectors (mean of the scales, normalised)."""
        return l2_normalize(self.per_scale(batch).mean(axis=0))
