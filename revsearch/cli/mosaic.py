"""Stitch a query image and its hits into one labelled picture."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from revsearch.errors import ImageLoadError
from revsearch.features.decode import load_image
from revsearch.index.hits import Hit
from revsearch.retrieval.regions import RegionHit

#: Colour (RGB) of a region hit's matched box.
BOX_COLOUR = (255, 210, 0)


def _tile(
    image: np.ndarray, size: int, label: str, colour: tuple[int, int, int], box: Sequence[float] | None = None
) -> np.ndarray:
    """Letterbox ``image`` into a size x size tile with a caption bar; ``box`` (relative x, y, width,
    height) is drawn over the image."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    tile = np.full((size + 22, size, 3), 255, np.uint8)
    y, x = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    tile[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
    if box is not None:
        (bx, by, bw, bh), (rh, rw) = box, resized.shape[:2]
        top_left = (x + round(bx * rw), y + round(by * rh))
        bottom_right = (x + round((bx + bw) * rw) - 1, y + round((by + bh) * rh) - 1)
        cv2.rectangle(tile, top_left, bottom_right, BOX_COLOUR, 2)
    tile[size:] = colour
    cv2.putText(tile, label[:28], (4, size + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def make_mosaic(query: np.ndarray, hits: Sequence[Hit], tile: int = 192, columns: int = 6) -> np.ndarray:
    """RGB mosaic: the query first (blue caption), then each hit with its rank and distance (a region
    hit: its matched box drawn)."""
    tiles = [_tile(query, tile, "query", (40, 90, 200))]
    for rank, hit in enumerate(hits, 1):
        try:
            image = load_image(hit.key, min_side=tile)
        except ImageLoadError:
            image = np.full((tile, tile, 3), 200, np.uint8)
        box = hit.box if isinstance(hit, RegionHit) else None
        tiles.append(_tile(image, tile, f"#{rank} d={hit.distance:.3g}", (60, 60, 60), box))
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (rows * columns - len(tiles))
    return np.vstack([np.hstack(tiles[r * columns : (r + 1) * columns]) for r in range(rows)])


def save_mosaic(path: str | os.PathLike, mosaic: np.ndarray) -> None:
    """Write an RGB mosaic as JPEG/PNG (by extension)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path} (unsupported extension or unwritable folder)")
