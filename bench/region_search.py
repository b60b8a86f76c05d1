"""Search by region: find the photo an object was pasted into, whole-image index vs region index.

    .venv/bin/python bench/region_search.py [--queries 300] [--distractors 1400] [--latency-n 100000]

Composites from Caltech-101: an object (the central 70 % of a Caltech photo) pasted into an unrelated
photo (another class) at 5-40 % of its area, aspect kept, at a random position. The index holds the
composites, the untouched photos they were pasted into, and other untouched photos (distractors);
the photos the objects came from are not indexed. Each object crop is the query; the relevant
image is its composite. Whole-image index: one vector per image (as every revsearch index).
Region index: per image the whole-image vector and the R-MAC regions of the same forward pass
(:mod:`revsearch.features.regions`), PCA-reduced, an image ranked by its best region. Also: the
IoU of that best region of the composite with the pasted box, build time with and without regions
(same images, same process), and query latency on K-means IVF at ``--latency-n`` images with
synthetic vectors (whole-image index vs region index holding that many images' regions).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
from common import CACHE, Timer, caltech_split, markdown_table, seed_torch_cache, write_results

from revsearch.features.cnn import Embedder, EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.features.pca import PCAReducer
from revsearch.features.regions import QUERY_SCALES, RegionEmbedder, RegionQueryEmbedder, entry_boxes
from revsearch.index.exact import ExactIndex
from revsearch.index.ivf import IVFIndex
from revsearch.retrieval.regions import best_over_queries

BUCKETS = ((0.05, 0.10), (0.10, 0.20), (0.20, 0.40))
CONFIG = EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1")
PCA_DIM = 256


def object_crop(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image[int(0.15 * h) : int(0.85 * h), int(0.15 * w) : int(0.85 * w)]


def paste(background: np.ndarray, obj: np.ndarray, area: float, rng) -> tuple[np.ndarray, list[float]]:
    """``obj`` resized to ``area`` of ``background`` (aspect kept), pasted at a random position; the box."""
    bh, bw = background.shape[:2]
    oh, ow = obj.shape[:2]
    scale = np.sqrt(area * bh * bw / (oh * ow))
    nh, nw = min(bh, max(8, round(oh * scale))), min(bw, max(8, round(ow * scale)))
    y, x = int(rng.integers(0, bh - nh + 1)), int(rng.integers(0, bw - nw + 1))
    out = background.copy()
    out[y : y + nh, x : x + nw] = cv2.resize(obj, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, [x / bw, y / bh, nw / bw, nh / bh]


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax1, bx1) - max(a[0], b[0])) * max(0.0, min(ay1, by1) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def make_set(n_queries: int, n_distractors: int, folder: Path):
    """Query crops, index image paths, the composite index and pasted box of each query."""
    rng = np.random.default_rng(0)
    rows = [r for r in caltech_split("train") + caltech_split("test")]
    order = rng.permutation(len(rows))
    objects = [rows[i] for i in order if rows[i][1] != "BACKGROUND_Google"][:n_queries]
    used = {p for p, _ in objects}
    others = [rows[i] for i in order if rows[i][0] not in used]
    backgrounds, pool = [], iter(others)
    for _, label in objects:
        backgrounds.append(next(r for r in pool if r[1] != label)[0])
    distractors = [p for p, _ in others if p not in set(backgrounds)][:n_distractors]
    folder.mkdir(parents=True, exist_ok=True)
    queries, composites, boxes, areas = [], [], [], []
    for i, ((obj_path, _), bg_path) in enumerate(zip(objects, backgrounds)):
        low, high = BUCKETS[i % len(BUCKETS)]
        area = float(rng.uniform(low, high))
        obj = object_crop(load_image(obj_path))
        composite, box = paste(load_image(bg_path), obj, area, rng)
        path = folder / f"composite_{i:04d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(composite, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        queries.append(obj)
        composites.append(str(path))
        boxes.append(box)
        areas.append(area)
    index_paths = composites + backgrounds + distractors
    return queries, index_paths, boxes, areas


def ivf_latency(n: int, dim: int, per_image: int, k: int, rng, scales: int = 1) -> float:
    """Median seconds per query of a K-means IVF over ``n * per_image`` synthetic unit vectors, a query
    being ``scales`` vectors searched at once for ``k * per_image`` hits each (as ``region_search``)."""
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    data = centres[rng.integers(0, 256, n * per_image)] + 0.5 * rng.normal(size=(n * per_image, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = IVFIndex.fit(data[:: max(1, per_image)])
    index.add([str(i) for i in range(len(data))], data)
    queries = data[rng.choice(len(data), 50, replace=False)]
    times = []
    for q in queries:
        q = q + 0.1 * rng.normal(size=(scales, dim)).astype(np.float32)
        start = time.perf_counter()
        index.search(q, k * per_image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--distractors", type=int, default=1400)
    parser.add_argument("--latency-n", type=int, default=100_000)
    args = parser.parse_args()
    seed_torch_cache()
    queries, paths, boxes, areas = make_set(args.queries, args.distractors, CACHE / "region_search")
    regional, plain, crops = RegionEmbedder(CONFIG), Embedder(CONFIG), RegionQueryEmbedder(CONFIG)
    timing = paths[: min(300, len(paths))]
    with Timer() as t_plain:
        plain.embed_paths(timing, progress=False)
    with Timer() as t_regions:
        regional.embed_paths(timing, progress=False)
    found = regional.embed_paths(paths, progress=False)
    assert not found.failures, found.failures
    vectors = found.vectors  # (n, 1 + regions, dim)
    n_images, per_image, dim = vectors.shape
    q = plain.embed_images(queries)
    q_scales = [crops.embed_scales(image) for image in queries]  # (n_scales, dim) per query

    whole = ExactIndex(dim)
    whole.add([str(i) for i in range(n_images)], vectors[:, 0])
    whole_hits = whole.search(q, n_images)
    pca = PCAReducer.fit(vectors.reshape(-1, dim), PCA_DIM, whiten=True)
    region_keys = [f"{i}:{r}" for i in range(n_images) for r in range(per_image)]
    regions = ExactIndex(PCA_DIM)
    regions.add(region_keys, pca.transform(vectors.reshape(-1, dim)))
    ranked_regions = [best_over_queries(regions.search(pca.transform(v), 10 * per_image)) for v in q_scales]
    boxes_of = entry_boxes(CONFIG.image_size)

    rows = []
    for low, high in BUCKETS:
        chosen = [i for i, a in enumerate(areas) if low <= a < high]
        stats = {"whole": [], "region": [], "iou": []}
        for i in chosen:
            stats["whole"].append([h.key for h in whole_hits[i]].index(str(i)))
            best = ranked_regions[i]
            ranked = [image for image, _, _ in best]
            stats["region"].append(ranked.index(str(i)) if str(i) in ranked else 10**6)
            match = next((r for image, r, _ in best if image == str(i)), None)
            if match is not None:
                stats["iou"].append(iou(boxes_of[match], boxes[i]))
        ranks = {k: np.array(v) for k, v in stats.items() if k != "iou"}
        r10_whole, r10_region = float(np.mean(ranks["whole"] < 10)), float(np.mean(ranks["region"] < 10))
        rows.append(
            {
                "area": f"{int(low * 100)}-{int(high * 100)} %",
                "queries": len(chosen),
                "whole R@1": float(np.mean(ranks["whole"] < 1)),
                "whole R@10": r10_whole,
                "region R@1": float(np.mean(ranks["region"] < 1)),
                "region R@10": r10_region,
                "region / whole R@10": r10_region / r10_whole if r10_whole else float("inf"),
                "IoU of the matched region": float(np.mean(stats["iou"])) if stats["iou"] else "",
            }
        )
    rng = np.random.default_rng(1)
    latency_whole = ivf_latency(args.latency_n, PCA_DIM, 1, 10, rng)
    latency_regions = ivf_latency(args.latency_n, PCA_DIM, per_image, 10, rng, len(QUERY_SCALES))
    meta = {
        "images indexed": n_images,
        "vectors per image (whole + regions)": per_image,
        "backbone": "mobilenet_v2 IMAGENET1K_V1, 224 px, GeM",
        "region PCA": f"{dim} -> {PCA_DIM}, whitened",
        "query scales (of 224 px)": list(QUERY_SCALES),
        "build s, 300 images, whole only / with regions": [t_plain.seconds, t_regions.seconds],
        "build time ratio": t_regions.seconds / t_plain.seconds,
        f"IVF query ms at {args.latency_n} images, whole / regions": [latency_whole * 1e3, latency_regions * 1e3],
        "latency ratio": latency_regions / latency_whole,
        "load": os.getloadavg(),
    }
    columns = list(rows[0])
    table = markdown_table(rows, columns) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items())
    write_results("region_search", rows, table, meta)


if __name__ == "__main__":
    main()
