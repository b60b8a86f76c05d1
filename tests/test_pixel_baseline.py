"""Pixel-distance baseline: exact top-k equal to a naive per-pair loop; near-copies found."""

from __future__ import annotations

import cv2
import numpy as np

from revsearch import ExactIndex, PixelFeatures
from revsearch.features.decode import load_image


def _naive_top_k(query_path, paths, size, k):
    """The per-query loop the vectorised index replaces: reload, resize, compare every file."""
    q = cv2.resize(load_image(query_path, min_side=size), (size, size), interpolation=cv2.INTER_AREA).astype(np.int64)
    scored = []
    for i, p in enumerate(paths):
        t = cv2.resize(load_image(p, min_side=size), (size, size), interpolation=cv2.INTER_AREA).astype(np.int64)
        scored.append((int(((q - t) ** 2).sum()), i))
    scored.sort()
    return [(str(paths[i]), d) for d, i in scored[:k]]


def test_vectorised_equals_naive_loop(subset_paths):
    features = PixelFeatures(size=16)
    batch = features.embed_paths(subset_paths, progress=False)
    assert batch.indices == list(range(len(subset_paths))) and not batch.failures
    index = ExactIndex(features.dim, features.dtype)
    index.add([str(p) for p in subset_paths], batch.vectors)
    for query in subset_paths[::5]:
        qv = features.embed_paths([query], progress=False).vectors
        hits = index.search(qv, k=7)[0]
        assert [(h.key, int(h.distance)) for h in hits] == _naive_top_k(query, subset_paths, 16, 7)


def test_recompressed_copy_is_top_hit(subset_paths, tmp_path):
    features = PixelFeatures(size=32)
    index = ExactIndex(features.dim, features.dtype)
    index.add([str(p) for p in subset_paths], features.embed_paths(subset_paths, progress=False).vectors)
    for i, src in enumerate(subset_paths[::3]):
        image = cv2.imread(str(src))
        copy = tmp_path / f"copy{i}.jpg"
        cv2.imwrite(str(copy), np.clip(image.astype(int) + 12, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 40])
        hits = index.search(features.embed_paths([copy], progress=False).vectors, k=3)[0]
        assert hits[0].key == str(src)
        assert hits[0].distance < hits[1].distance
