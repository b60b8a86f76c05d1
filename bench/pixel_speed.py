"""Pixel baseline: vectorised thumbnail index vs the naive per-query loop (reload every file).

    .venv/bin/python bench/pixel_speed.py [--database 1000] [--queries 5] [--size 32]

Both return the top-k by squared L2 on size x size thumbnails; the script checks the two top-k
lists are identical and reports the per-query speed-up (same run, same files).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from common import Timer, caltech_split, markdown_table, write_results

from revsearch import ExactIndex, PixelFeatures
from revsearch.features.decode import load_image


def naive_query(query: str, paths: list[str], size: int, k: int) -> list[tuple[str, int]]:
    """The reference article's loop: for each query, read and resize every database file."""

    def thumb(p: str) -> np.ndarray:
        return cv2.resize(load_image(p, min_side=size), (size, size), interpolation=cv2.INTER_AREA).astype(np.int64)

    q = thumb(query)
    scored = sorted((int(((q - thumb(p)) ** 2).sum()), i) for i, p in enumerate(paths))
    return [(paths[i], d) for d, i in scored[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    train = [p for p, _ in caltech_split("train")]
    paths = train[:: max(1, len(train) // args.database)][: args.database]
    queries = [p for p, _ in caltech_split("test")][: args.queries]
    features = PixelFeatures(args.size)
    with Timer() as build:
        index = ExactIndex(features.dim, features.dtype)
        index.add(paths, features.embed_paths(paths, progress=False).vectors)
    with Timer() as ours:
        fast = [index.search(features.embed_paths([q], progress=False).vectors, args.k)[0] for q in queries]
    with Timer() as naive:
        slow = [naive_query(q, paths, args.size, args.k) for q in queries]
    identical = all([(h.key, int(h.distance)) for h in f] == s for f, s in zip(fast, slow))
    row = {
        "database": len(paths),
        "thumbnail": f"{args.size}x{args.size}",
        "index build s": build.seconds,
        "naive s/query": naive.seconds / len(queries),
        "vectorised ms/query": 1000 * ours.seconds / len(queries),
        "speed-up": naive.seconds / ours.seconds,
        "identical top-k": identical,
    }
    write_results("pixel_speed", [row], markdown_table([row], list(row)), {"queries": len(queries), "k": args.k})
    if not identical:
        raise SystemExit("top-k lists differ between the naive loop and the index")


if __name__ == "__main__":
    main()
