"""Search by region: find the photo an object was pasted into, whole-image index vs region index.

    .venv/bin/python bench/region_search.py [--queries 300] [--distractors 1400] [--sizes 224 320]
                                            [--latency-n 100000]

Composites from Caltech-101: an object (the central 70 % of a Caltech photo) pasted into an unrelated
photo (another class) at 5-40 % of its area, aspect kept, at a random position. The index holds the
composites, the untouched photos they were pasted into, and other untouched photos (distractors);
the photos the objects came from are not indexed. Each object crop is the query; the relevant
image is its composite. Whole-image index: one vector per image (as every revsearch index).
Region index: what the library builds (:mod:`revsearch.features.regions`,
:class:`~revsearch.retrieval.regions.RegionEntries`: whitened PCA, exact search, an image ranked by its
best region over the query scales), per network input side (``--sizes``; 224 is the default).
Also: the IoU of the composite's best region with the pasted box; the same region vectors in a K-means
IVF at its default probes (where K-means indexes kept their regions before); build time of real
``SearchIndex.build`` runs with and without regions (exact and K-means, same images, same process);
query latency at ``--latency-n`` images with synthetic vectors (a whole-image K-means IVF of 128-d
vectors, the library's default PCA, against the exact region index of as many images).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from common import CACHE, Timer, caltech_split, markdown_table, seed_torch_cache, write_results

from revsearch import SearchIndex
from revsearch.features.cnn import Embedder, EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.features.regions import QUERY_SCALES, RegionEmbedder, RegionQueryEmbedder, entry_boxes
from revsearch.index.exact import ExactIndex
from revsearch.index.ivf import IVFIndex
from revsearch.retrieval.regions import RegionEntries

BUCKETS = ((0.05, 0.10), (0.10, 0.20), (0.20, 0.40))
MODEL = {"backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1"}
#: Images of the timed builds: over 1,000, so that whole-image builds fit their PCA too (as regions do).
BUILD_IMAGES = 1200
#: Timed rounds of those builds (after a warm-up round).
BUILD_ROUNDS = 5


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


def rank_of(found: list[tuple[str, int, float]], key: str) -> tuple[int, int | None]:
    """Rank of image ``key`` among ``found`` (image, region, distance) rows (10**6 if absent), its region."""
    images = [image for image, _, _ in found]
    return (images.index(key), found[images.index(key)][1]) if key in images else (10**6, None)


def region_rows(size: int, queries, paths, boxes, areas, whole_ranks: list[int]) -> tuple[list[dict], dict]:
    """R@1 / R@10 per area bucket for the region index at input side ``size``, and the region vectors'
    R@10 in a K-means IVF at its default probes (same vectors, same PCA)."""
    config = EmbedderConfig(**MODEL, image_size=size)
    found = RegionEmbedder(config).embed_paths(paths, progress=False)
    assert not found.failures, found.failures
    vectors = found.vectors  # (n, 1 + regions, dim)
    keys = [str(i) for i in range(len(paths))]
    entries = RegionEntries(None)
    reduced = entries.reduce(vectors)
    entries.index = ExactIndex(reduced.shape[1])
    entries.add(keys, reduced)
    ivf = RegionEntries(IVFIndex.fit(reduced), entries.pca, entries.per_image)
    ivf.add(keys, reduced)
    crops = RegionQueryEmbedder(config)
    boxes_of = entry_boxes(size)
    ranks, ivf_ranks, ious = [], [], []
    for i, crop in enumerate(queries):
        scales = crops.embed_scales(crop)
        rank, region = rank_of(entries.search(scales, 10), str(i))
        ranks.append(rank)
        ivf_ranks.append(rank_of(ivf.search(scales, 10), str(i))[0])
        ious.append(iou(boxes_of[region], boxes[i]) if region is not None else None)
    rows = []
    for low, high in BUCKETS:
        chosen = [i for i, a in enumerate(areas) if low <= a < high]
        whole, region = np.array([whole_ranks[i] for i in chosen]), np.array([ranks[i] for i in chosen])
        r10_whole = float(np.mean(whole < 10))
        matched = [ious[i] for i in chosen if ious[i] is not None]
        rows.append(
            {
                "input": f"{size} px",
                "area": f"{int(low * 100)}-{int(high * 100)} %",
                "queries": len(chosen),
                "whole R@10": r10_whole,
                "region R@1": float(np.mean(region < 1)),
                "region R@10": float(np.mean(region < 10)),
                "region / whole R@10": float(np.mean(region < 10)) / r10_whole if r10_whole else float("inf"),
                "region R@10, K-means IVF": float(np.mean(np.array([ivf_ranks[i] for i in chosen]) < 10)),
                "IoU of the matched region": float(np.mean(matched)) if matched else "",
            }
        )
    meta = {"vectors per image": entries.per_image, "region PCA": f"{vectors.shape[-1]} -> {entries.pca.output_dim}"}
    return rows, meta


def build_seconds(
    paths: list[str], folder: Path, rounds: int = BUILD_ROUNDS
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of ``SearchIndex.build`` over ``paths``: whole-image vs regions (224 px) per kind, and an
    exact index of regions at 320 px; ``rounds`` rounds, the builds interleaved, after a warm-up.
    Returns the median seconds per build, and per kind the median of each round's regions / whole
    ratio (builds side by side in a round share the machine's state of the moment)."""
    config = EmbedderConfig(**MODEL)
    builds = {
        "exact whole": ("exact", Embedder(config)),
        "exact regions": ("exact", RegionEmbedder(config)),
        "kmeans whole": ("kmeans", Embedder(config)),
        "kmeans regions": ("kmeans", RegionEmbedder(config)),
        "exact regions, 320 px": ("exact", RegionEmbedder(EmbedderConfig(**MODEL, image_size=320))),
    }
    times: dict[str, list[float]] = {name: [] for name in builds}
    for round_ in range(rounds + 1):
        for name, (kind, extractor) in builds.items():
            shutil.rmtree(folder, ignore_errors=True)
            with Timer() as timer:
                index, _ = SearchIndex.build(paths if round_ else paths[:20], folder, kind, extractor, progress=False)
            index.close()
            if round_:  # round 0: imports, sessions, caches
                times[name].append(timer.seconds)
    shutil.rmtree(folder, ignore_errors=True)

    def ratio(regions: str, whole: str) -> float:
        return float(np.median(np.array(times[regions]) / np.array(times[whole])))

    ratios = {kind: ratio(f"{kind} regions", f"{kind} whole") for kind in ("exact", "kmeans")}
    ratios["exact, 320 px"] = ratio("exact regions, 320 px", "exact whole")
    return {name: float(np.median(t)) for name, t in times.items()}, ratios


def unit_vectors(n: int, dim: int, rng) -> np.ndarray:
    """Clustered synthetic unit vectors (256 centres, noise 0.5)."""
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    data = centres[rng.integers(0, 256, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def median_seconds(search, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def latency(n: int, per_image: int, region_dim: int, rng) -> dict[str, float]:
    """Median ms per query at ``n`` images: a whole-image K-means IVF (128-d, default probes, 10 hits)
    and the exact region index of ``n * per_image`` vectors (``QUERY_SCALES`` vectors, k x per_image hits
    each, as :meth:`RegionEntries.search`)."""
    whole = unit_vectors(n, 128, rng)
    index = IVFIndex.fit(whole)
    index.add([str(i) for i in range(n)], whole)
    whole_ms = 1e3 * median_seconds(lambda q: index.search(q[None], 10), whole[rng.choice(n, 50)])
    regions = unit_vectors(n * per_image, region_dim, rng)
    exact = ExactIndex(region_dim)
    exact.add([str(i) for i in range(len(regions))], regions)
    queries = regions[rng.choice(len(regions), 20)][:, None] + 0.1 * rng.normal(
        size=(20, len(QUERY_SCALES), region_dim)
    )
    region_ms = 1e3 * median_seconds(lambda q: exact.search(q.astype(np.float32), 10 * per_image), queries)
    return {"whole-image K-means IVF ms": whole_ms, "regions, exact, ms": region_ms, "ratio": region_ms / whole_ms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--distractors", type=int, default=1400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--latency-n", type=int, default=100_000)
    args = parser.parse_args()
    seed_torch_cache()
    queries, paths, boxes, areas = make_set(args.queries, args.distractors, CACHE / "region_search")
    plain = Embedder(EmbedderConfig(**MODEL))
    whole = ExactIndex(plain.dim)
    whole.add([str(i) for i in range(len(paths))], plain.embed_paths(paths, progress=False).vectors)
    whole_ranks = [
        [h.key for h in hits].index(str(i))
        for i, hits in enumerate(whole.search(plain.embed_images(queries), len(paths)))
    ]
    rows, meta = [], {"images indexed": len(paths), "backbone": "mobilenet_v2 IMAGENET1K_V1, GeM"}
    for size in args.sizes:
        size_rows, size_meta = region_rows(size, queries, paths, boxes, areas, whole_ranks)
        rows += size_rows
        meta |= {f"{k} ({size} px)": v for k, v in size_meta.items()}
    meta["query scales (of the input side)"] = list(QUERY_SCALES)
    seconds, ratios = build_seconds(paths[:BUILD_IMAGES], CACHE / "region_build")
    meta[f"build s, {min(BUILD_IMAGES, len(paths))} images (median of {BUILD_ROUNDS})"] = {
        k: round(v, 1) for k, v in seconds.items()
    }
    meta[f"build time ratio, regions / whole (median of {BUILD_ROUNDS} rounds' ratios)"] = {
        k: round(v, 2) for k, v in ratios.items()
    }
    per_image = len(entry_boxes(224))
    meta[f"latency at {args.latency_n} images"] = {
        k: round(v, 2) for k, v in latency(args.latency_n, per_image, 256, np.random.default_rng(1)).items()
    }
    meta["load"] = os.getloadavg()
    table = markdown_table(rows, list(rows[0])) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items())
    write_results("region_search", rows, table, meta)


if __name__ == "__main__":
    main()
