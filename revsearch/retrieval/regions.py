"""Region search: each image's regions are index entries keyed ``<image key>:<region>`` (region 0 is
the whole image); a query's region hits are reduced per image to its best region. :class:`RegionEntries`
keeps them in an index of their own, for the Brain backend and the folder index alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from revsearch.features.pca import PCAReducer
from revsearch.index.hits import Hit

#: Whitened-PCA size of region vectors (the Brain backend's ``region_dim`` default), at most.
REGION_DIM = 256
#: Region vectors a whitened PCA is fitted on, per output dimension, at least: whitening fitted on fewer
#: amplifies the sample's own noise (30 images, 420 vectors: R@1 of the source image 0.47 unreduced,
#: 0.30 at 256-d, 0.50 at 64-d; docs/benchmarks.md), so a small index gets fewer dimensions.
SAMPLES_PER_DIM = 8
#: Name of a Milvus collection of region entries: the image collection's name and this.
REGIONS_SUFFIX = "_regions"


@dataclass(frozen=True)
class RegionHit(Hit):
    """An image found by one of its regions: ``region`` (0: the whole image) and its relative
    ``[x, y, width, height]`` ``box``."""

    region: int
    box: tuple[float, float, float, float]


def region_index_kind(kind: str) -> str:
    """The kind of the index that holds the region entries of an index of ``kind``: a Milvus collection
    (FLAT unless chosen otherwise) beside a Milvus one, else an exact index. A K-means IVF over region
    vectors lost most of what regions find (R@10 at 10-20 % of the area 0.53 -> 0.40 at the default
    probes, 0.19 -> 0.05 at 5-10 %; whitened region vectors have little cluster structure) and fitting
    it on 14x the vectors grows the build (docs/benchmarks.md, search by region)."""
    return "milvus" if kind == "milvus" else "exact"


def region_keys(image_key: str, n_regions: int) -> list[str]:
    """The keys of an image's ``n_regions`` entries (0: the whole image)."""
    return [f"{image_key}:{r}" for r in range(n_regions)]


def split_key(key: str) -> tuple[str, int]:
    """``<image key>:<region>`` -> (image key, region)."""
    image, region = key.rsplit(":", 1)
    return image, int(region)


def best_per_image(hits: Iterable[Hit]) -> list[tuple[str, int, float]]:
    """(image key, best region, its distance) per image, in the order of ``hits`` (nearest first)."""
    best: dict[str, tuple[str, int, float]] = {}
    for hit in hits:
        image, region = split_key(hit.key)
        if image not in best:
            best[image] = (image, region, hit.distance)
    return list(best.values())


def best_over_queries(rows: Iterable[Iterable[Hit]]) -> list[tuple[str, int, float]]:
    """:func:`best_per_image` over the hits of several query vectors (e.g. one per scale): each image
    with its nearest region to any of them, nearest first."""
    found: dict[str, tuple[str, int, float]] = {}
    for row in rows:
        for image, region, distance in best_per_image(row):
            if image not in found or distance < found[image][2]:
                found[image] = (image, region, distance)
    return sorted(found.values(), key=lambda f: f[2])


class RegionEntries:
    """Every image's entries (whole image, then regions) in a vector index of their own, keyed
    ``<image key>:<region>``, reduced by a whitened PCA (fitted on the first ones added if not given).
    ``index``: anything with the ``add`` / ``remove`` / ``search`` of a
    :class:`~revsearch.index.protocol.VectorIndex`."""

    def __init__(self, index, pca: PCAReducer | None = None, per_image: int = 0, dim: int = REGION_DIM):
        self.index, self.pca, self.per_image, self.dim = index, pca, per_image, dim

    def fit(self, vectors: np.ndarray) -> None:
        """Fit the whitened PCA on ``(n images, entries per image, d)`` vectors."""
        flat = vectors.reshape(-1, vectors.shape[-1])
        dim = max(1, min(self.dim, len(flat) // SAMPLES_PER_DIM, flat.shape[1]))
        self.pca, self.per_image = PCAReducer.fit(flat, dim, whiten=True), vectors.shape[1]

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        """``(n images, entries per image, d)`` -> the ``(n * entries, dim)`` vectors the index stores (the
        PCA fitted on the first ones if not yet)."""
        flat = vectors.reshape(-1, vectors.shape[-1])
        if self.pca is None:
            self.fit(vectors)
        if vectors.shape[1] != self.per_image:
            raise ValueError(f"{vectors.shape[1]} regions per image, the index has {self.per_image}")
        return self.pca.transform(flat)

    def keys(self, images: Sequence[str]) -> list[str]:
        return [key for image in images for key in region_keys(image, self.per_image)]

    def add(self, images: Sequence[str], reduced: np.ndarray) -> None:
        """Insert or replace the entries of ``images`` (vectors from :meth:`reduce`)."""
        if len(images):
            self.index.add(self.keys(images), reduced)

    def remove(self, images: Sequence[str]) -> None:
        keys = self.keys(images)
        if keys:
            self.index.remove(keys)

    def search(self, vectors: np.ndarray, k: int, images: Sequence[str] | None = None) -> list[tuple[str, int, float]]:
        """The ``k`` images (among ``images``; None: all) whose best entry is nearest to any of the query
        ``vectors`` (e.g. one per scale): (image key, region, squared L2 distance), nearest first."""
        allowed = None if images is None else self.keys(images)
        queries, wanted = self.pca.transform(vectors), k * self.per_image
        if wanted <= (getattr(self.index, "max_limit", None) or wanted):
            hits = self.index.search(queries, wanted, allowed=allowed)  # k images are among them
        else:
            hits = [self._hits_of_images(query, k, allowed) for query in queries]
        return best_over_queries(hits)[:k]

    def _hits_of_images(self, query: np.ndarray, k: int, allowed: list[str] | None) -> list[Hit]:
        """The hits nearest to one query until they hold ``k`` images (or all), page after page: for an
        index whose searches return fewer than ``k`` x regions per image hits (Milvus: 16,384)."""
        hits: list[Hit] = []
        images: set[str] = set()
        for page in self.index.nearest_pages(query, allowed):
            hits += page
            images.update(split_key(hit.key)[0] for hit in page)
            if len(images) >= k:
                break
        return hits
