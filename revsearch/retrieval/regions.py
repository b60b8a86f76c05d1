"""Region search: each image's regions are index entries keyed ``<image key>:<region>`` (region 0 is
the whole image); a query's region hits are reduced per image to its best region."""

from __future__ import annotations

from collections.abc import Iterable

from revsearch.index.hits import Hit


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
