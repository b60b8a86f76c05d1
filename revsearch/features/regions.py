"""Region descriptors (R-MAC grid, Tolias et al. 2016) pooled from the CNN's one forward pass, so an
object can be found inside an image: per image the whole-image vector plus one vector per region.

Every image is resized to the same square network input, so the regions are the same for every image:
:data:`REGION_LEVELS` scales of square windows (side ``2 * map / (level + 1)`` cells, overlapping
about 40 %), each pooled as the whole image is (GeM or average) and L2-normalised.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from revsearch.errors import QueryImageError
from revsearch.features.cnn import Embedder, EmbedderConfig
from revsearch.features.decode import as_rgb_array
from revsearch.features.factory import cnn_config
from revsearch.features.multiscale import MultiScaleEmbedder
from revsearch.features.pca import l2_normalize

#: R-MAC levels below the whole image (level 1): 2 -> 2 x 2 windows, 3 -> 3 x 3 (13 regions).
REGION_LEVELS = (2, 3)
#: A region query (a crop) is embedded at these fractions of the input side (the sides the region
#: windows have in the network input, and one step smaller), each scale searched, best kept per image.
QUERY_SCALES = (0.71, 0.5, 0.36)
#: Smallest crop side (pixels) a region query accepts: the network's total stride.
MIN_CROP_SIDE = 32


@cache
def blas_threads() -> ThreadpoolController:
    """The process's BLAS thread pools (found once: it takes about a millisecond)."""
    return ThreadpoolController()


def region_windows(side: int, levels: tuple[int, ...] = REGION_LEVELS) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) feature-map cells of each region of a ``side`` x ``side`` map, level by level."""
    windows = []
    for level in levels:
        size = max(1, round(2 * side / (level + 1)))
        starts = np.unique(np.round(np.linspace(0, side - size, level)).astype(int))
        windows += [(y, x, y + size, x + size) for y in starts for x in starts]
    return windows


def region_boxes(side: int, levels: tuple[int, ...] = REGION_LEVELS) -> np.ndarray:
    """Each region as a relative ``[x, y, width, height]`` box in the image (FiftyOne's convention)."""
    return np.array([[x0, y0, x1 - x0, y1 - y0] for y0, x0, y1, x1 in region_windows(side, levels)]) / side


def entry_boxes(image_size: int) -> np.ndarray:
    """The box of each of an image's entries in a region index: the whole image, then its regions
    (the feature map's side is the input side over the trunk's total stride, 32, rounded up)."""
    return np.vstack([[0.0, 0.0, 1.0, 1.0], region_boxes(-(-image_size // 32))])


def whole_image(vectors: np.ndarray) -> np.ndarray:
    """The whole-image vectors of an extractor's output (with regions: its first entry per image)."""
    return vectors[:, 0] if vectors.ndim == 3 else vectors


def check_crop(image: np.ndarray, what: str = "the query image") -> np.ndarray:
    """``image`` if both its sides are at least :data:`MIN_CROP_SIDE` pixels; else a one-line error."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_CROP_SIDE:
        raise QueryImageError(f"{what} is {width}x{height} px: at least {MIN_CROP_SIDE} px a side is needed")
    return image


def embed_crop(description: dict, image: np.ndarray) -> np.ndarray:
    """A crop's region-query vectors, one per :data:`QUERY_SCALES`, with the CNN an index's extractor
    ``description`` names (``describe()`` of its :class:`RegionEmbedder`)."""
    embedder = RegionQueryEmbedder(
        cnn_config(description), digest=description.get("weights_digest"), model_id=description.get("model_id")
    )
    return embedder.embed_scales(check_crop(image))


class RegionEmbedder(Embedder):
    """An :class:`Embedder` whose ``forward`` gives, per image, the whole-image vector then one per
    region: ``(B, 1 + n_regions, dim)`` unit vectors from one pass of the trunk."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label = f"embed {self.config.backbone} + regions"
        self._weights: np.ndarray | None = None

    def describe(self) -> dict:
        return {**super().describe(), "regions": list(REGION_LEVELS)}

    @property
    def per_image(self) -> int:
        """Entries per image: the whole image, then its regions."""
        return len(entry_boxes(self.config.image_size))

    def no_vectors(self) -> np.ndarray:
        return np.empty((0, self.per_image, self.dim), self.dtype)

    def window_weights(self, side: int) -> np.ndarray:
        """``(side * side, entries)``: column ``j`` averages the cells of entry ``j`` (0: the whole map)."""
        if self._weights is None or self._weights.shape[0] != side * side:
            windows = [(0, 0, side, side), *region_windows(side)]
            weights = np.zeros((len(windows), side, side), np.float32)
            for j, (y0, x0, y1, x1) in enumerate(windows):
                weights[j, y0:y1, x0:x1] = 1.0 / ((y1 - y0) * (x1 - x0))
            self._weights = weights.reshape(len(windows), -1).T
        return self._weights

    def forward(self, batch: np.ndarray) -> np.ndarray:
        maps = self.feature_maps(batch)
        b, c, h, w = maps.shape
        p = self.config.gem_p if self.config.pooling == "gem" else 1.0
        powered = np.power(np.maximum(maps, 1e-6), p) if p != 1.0 else maps
        # every entry's mean in one matrix product (5x faster than a summed-area table here), on one
        # BLAS thread: BLAS threads left spinning after it slowed the next batches' trunk by 20-25 %
        with blas_threads().limit(limits=1, user_api="blas"):
            sums = powered.reshape(b * c, h * w) @ self.window_weights(h)
        means = np.maximum(sums, 1e-18) ** (1.0 / p)
        return l2_normalize(means.reshape(b, c, -1).transpose(0, 2, 1).reshape(-1, c)).reshape(b, -1, c)


class RegionQueryEmbedder(MultiScaleEmbedder):
    """Embeds a crop at :data:`QUERY_SCALES`: one vector per scale, to search region vectors with."""

    def __init__(self, config: EmbedderConfig, **kwargs):
        super().__init__(config, QUERY_SCALES, **kwargs)

    def embed_scales(self, image: np.ndarray) -> np.ndarray:
        """(n_scales, dim) unit vectors of one RGB image."""
        return self.per_scale(self.prepare(as_rgb_array(image))[None])[:, 0]
