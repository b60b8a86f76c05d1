"""Object (patch) embedding speed: whole images vs the objects of a detections field, same extractor.

    .venv/bin/python bench/patch_speed.py [--images 96] [--boxes 3]

One FiftyOne dataset of Caltech photos with ``--boxes`` random boxes each; in this one process, in
turn: the whole images (``tools.embed_samples``), their objects with revsearch's patch pipeline
(``patches.embed_patches``: each image decoded once, crops batched across images) and with FiftyOne's
``compute_patch_embeddings`` (the same extractor as its model; it batches within one image). Images
per second are of source images; crops per second of objects.
"""

from __future__ import annotations

import argparse
import os

import fiftyone as fo
import numpy as np
from common import SHARED, Timer, caltech_split, markdown_table, seed_torch_cache, write_results

from revsearch.features.factory import make_extractor
from revsearch.fiftyone.patches import embed_patches
from revsearch.fiftyone.tools import ExtractorModel, embed_samples


def dataset(n: int, boxes: int) -> fo.Dataset:
    rng = np.random.default_rng(0)
    ds = fo.Dataset()
    samples = []
    for path, _ in caltech_split("test")[:n]:
        dets = []
        for _ in range(boxes):
            w, h = rng.uniform(0.2, 0.6, size=2)
            dets.append(fo.Detection(label="o", bounding_box=[rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h]))
        samples.append(fo.Sample(filepath=path, gt=fo.Detections(detections=dets)))
    ds.add_samples(samples, progress=False)
    return ds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--boxes", type=int, default=3)
    args = parser.parse_args()
    seed_torch_cache()
    fo.config.show_progress_bars = False
    ds = dataset(args.images, args.boxes)
    rows = []
    try:
        for name in ("cnn", "pixel"):
            cnn = {"type": "cnn", "backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1"}
            extractor = make_extractor(cnn if name == "cnn" else "pixel")
            extractor.embed_images([np.zeros((64, 64, 3), np.uint8)])  # load the model first
            n_crops = args.images * args.boxes
            with Timer() as whole:
                embed_samples(ds, extractor)
            with Timer() as ours:
                found = embed_patches(ds, "gt", extractor)
            assert len(found.label_ids) == n_crops and not found.failures
            with Timer() as fiftyone:
                ds.compute_patch_embeddings(ExtractorModel(extractor), "gt", progress=False)
            for label, t, crops in (
                ("whole images", whole, 0),
                ("objects, revsearch (crops batched across images)", ours, n_crops),
                ("objects, FiftyOne compute_patch_embeddings", fiftyone, n_crops),
            ):
                rows.append(
                    {
                        "features": extractor.describe().get("backbone", name),
                        "what": label,
                        "s": t.seconds,
                        "images/s": args.images / t.seconds,
                        "crops/s": crops / t.seconds if crops else "",
                        "vs whole images (images/s)": whole.seconds / t.seconds,
                    }
                )
    finally:
        ds.delete()
    columns = ["features", "what", "s", "images/s", "crops/s", "vs whole images (images/s)"]
    meta = {"images": args.images, "boxes": args.boxes, "load": os.getloadavg(), "shared": str(SHARED)}
    write_results("patch_speed", rows, markdown_table(rows, columns), meta)


if __name__ == "__main__":
    main()
