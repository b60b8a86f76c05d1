"""Patch embeddings for a label field: each image decoded once, its boxes cropped (FiftyOne's
``extract_patch``: ``force_square``, ``alpha``) and the crops embedded in batches across images."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fiftyone.core.labels as fol
import fiftyone.utils.patches as foup
import numpy as np

from revsearch.errors import ImageLoadError
from revsearch.features.decode import load_image
from revsearch.features.pipeline import FeatureExtractor

Progress = Callable[[float, str], None] | None


@dataclass
class PatchVectors:
    """Vectors of the patches embedded (label id and sample id of each) and a reason per image that failed."""

    sample_ids: list[str] = field(default_factory=list)
    label_ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    #: objects skipped because their box holds no pixels (zero size, or outside the image)
    empty: int = 0

    def stacked(self, extractor: FeatureExtractor) -> np.ndarray:
        return np.concatenate(self.vectors) if self.vectors else np.empty((0, extractor.dim), extractor.dtype)


def _boxes(label) -> list[fol.Detection]:
    """The objects of one sample's label (None, a single object or a list) as detections."""
    if label is None:
        return []
    objects = label.detections if isinstance(label, fol.Detections) else None
    objects = label.polylines if isinstance(label, fol.Polylines) else objects if objects is not None else [label]
    return [o.to_detection() if isinstance(o, fol.Polyline) else o for o in objects]


def labelled_samples(samples, patches_field: str) -> list[tuple[str, str, list[fol.Detection]]]:
    """(sample id, file path, objects) of every sample with at least one object in ``patches_field``."""
    rows = zip(*samples.values(["id", "filepath", patches_field]))
    return [(i, path, boxes) for i, path, label in rows if (boxes := _boxes(label))]


def embed_patches(
    samples,
    patches_field: str,
    extractor: FeatureExtractor,
    force_square: bool = False,
    alpha: float | None = None,
    progress: Progress = None,
) -> PatchVectors:
    """Embed every object of ``patches_field``; an image that cannot be read is skipped with its reason."""
    todo = labelled_samples(samples, patches_field)
    out, pending = PatchVectors(), []

    def crops(item) -> list[tuple[str, np.ndarray | None]]:
        image = load_image(item[1])
        patches = ((box.id, foup.extract_patch(image, box, force_square, alpha)) for box in item[2])
        return [(i, extractor.prepare(p) if p.size else None) for i, p in patches]

    def flush() -> None:
        if pending:
            out.vectors.append(extractor.forward(np.stack(pending)))
            pending.clear()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for done, (item, future) in enumerate(_prefetched(pool, crops, todo), start=1):
            try:
                prepared = future.result()
            except ImageLoadError as exc:
                out.failures[item[0]] = exc.reason
                continue
            except Exception as exc:  # a decoder or crop bug must not abort the run either
                out.failures[item[0]] = f"unexpected error: {exc!r}"
                continue
            for label_id, crop in prepared:
                if crop is None:
                    out.empty += 1
                    continue
                out.sample_ids.append(item[0])
                out.label_ids.append(label_id)
                pending.append(crop)
                if len(pending) == extractor.batch_size:
                    flush()
            if progress:
                progress(done / len(todo), f"embedded the objects of {done}/{len(todo)} images")
    flush()
    return out


def _prefetched(pool: ThreadPoolExecutor, work, items: list, ahead: int = 8) -> Iterator:
    """(item, future of ``work(item)``) in order, with up to ``ahead`` items decoding in the pool."""
    futures = deque(pool.submit(work, item) for item in items[:ahead])
    for i, item in enumerate(items):
        if i + ahead < len(items):
            futures.append(pool.submit(work, items[i + ahead]))
        yield item, futures.popleft()
