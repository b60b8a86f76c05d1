"""Search by region on FiftyOne: a crop (image, or a box on a sample) matched against the regions of
every image of an index built with ``regions=True``; each hit's best region is written as a
``Detection`` so the App draws where it matched."""

from __future__ import annotations

import fiftyone as fo
import numpy as np

from revsearch.features.decode import load_image
from revsearch.features.factory import cnn_config
from revsearch.features.query_source import ImageQuery, load_query_image
from revsearch.features.regions import check_crop, embed_crop, entry_boxes
from revsearch.fiftyone.brain import RevsearchSimilarityIndex
from revsearch.fiftyone.tools import clear_outside

#: Sample field holding the best-matching region of each result.
REGION_FIELD = "revsearch_region"


def crop_box(image: np.ndarray, box: list[float], source: str) -> np.ndarray:
    """The relative ``[x, y, width, height]`` box of ``image``; ValueError (one line) for a box that is
    outside the image, not positive, or smaller than
    :data:`~revsearch.features.regions.MIN_CROP_SIDE` pixels."""
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"box {list(box)} has no area: width and height must be positive (relative, 0-1)")
    if x < 0 or y < 0 or x + w > 1.0001 or y + h > 1.0001:
        raise ValueError(f"box {list(box)} is outside the image: [x, y, width, height] must lie within 0-1")
    height, width = image.shape[:2]
    x0, y0 = round(x * width), round(y * height)
    crop = image[y0 : y0 + max(1, round(h * height)), x0 : x0 + max(1, round(w * width))]
    return check_crop(crop, f"box {list(box)} of {source}")


def region_query_image(
    results: RevsearchSimilarityIndex, query: ImageQuery, box: list[float] | None = None, allow_private_urls=False
) -> np.ndarray:
    """The crop to search with: ``query`` itself (path, URL, bytes, array), or the ``box`` of the sample
    (or image) ``query`` names."""
    dataset = results.samples._root_dataset
    if isinstance(query, str) and query in set(results.sample_ids.tolist()):
        path = dataset[query].filepath
        image = load_image(path)
        return crop_box(image, box, path) if box is not None else image
    image = load_query_image(query, allow_private_urls=allow_private_urls)
    return crop_box(image, box, "the query image") if box is not None else image


def region_view(
    results: RevsearchSimilarityIndex,
    samples,
    query: ImageQuery,
    k: int,
    box: list[float] | None = None,
    dist_field: str | None = None,
    region_field: str = REGION_FIELD,
    allow_private_urls: bool = False,
):
    """``samples`` that contain the query crop, best first: each ranked by its best-matching region
    (written as a ``Detection`` in ``region_field``, its distance in ``dist_field`` if given)."""
    if not results.has_regions:
        raise ValueError(f"index {results.key!r} holds no regions: build it with regions on to search inside images")
    vectors = embed_crop(results.config.extractor, region_query_image(results, query, box, allow_private_urls))
    results.use_view(samples)
    found = results.region_search(vectors, k)
    boxes = entry_boxes(cnn_config(results.config.extractor).image_size)
    dataset = samples._root_dataset
    ids = [sample_id for sample_id, _, _ in found]
    matches = {
        sample_id: fo.Detection(label="match", bounding_box=boxes[region].tolist(), confidence=float(1 / (1 + dist)))
        for sample_id, region, dist in found
    }
    dataset.set_values(region_field, matches, key_field="id")
    clear_outside(dataset, region_field, ids)
    if dist_field:
        dataset.set_values(dist_field, {sample_id: float(dist) for sample_id, _, dist in found}, key_field="id")
        clear_outside(dataset, dist_field, ids)
    return samples.select(ids, ordered=True)
