"""Embedding throughput: end-to-end (files -> vectors) vs the bare model on preloaded tensors.

    .venv/bin/python bench/embed_speed.py [--images 256] [--large 32]

Both sides run in this one process at the same batch size, so the ratio is what matters; once per
runtime (ONNX Runtime, the default, and PyTorch).
"Large" inputs are 12-megapixel JPEGs (4000x3000) made by upscaling Caltech photos.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from common import Timer, caltech_split, markdown_table, seed_torch_cache, write_results

from revsearch import Embedder, EmbedderConfig
from revsearch.features.cnn import RUNTIMES

BACKBONES = [("mobilenet_v2", "IMAGENET1K_V1"), ("resnet18", None), ("resnet50", None)]


def bare_model_rate(embedder: Embedder, n: int) -> float:
    """Images/s of the trunk + pooling alone on random preloaded uint8 batches."""
    bs, size = embedder.batch_size, embedder.config.image_size
    batch = np.random.default_rng(0).integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
    embedder.forward(batch)  # warm-up
    with Timer() as t:
        for _ in range(max(1, n // bs)):
            embedder.forward(batch)
    return max(1, n // bs) * bs / t.seconds


def pipeline_rate(embedder: Embedder, paths: list[str]) -> float:
    embedder.embed_paths(paths[: embedder.batch_size], progress=False)  # warm-up
    with Timer() as t:
        embedder.embed_paths(paths, progress=False)
    return len(paths) / t.seconds


def make_large_jpegs(paths: list[str], folder: Path) -> list[str]:
    out = []
    for i, p in enumerate(paths):
        big = cv2.resize(cv2.imread(p), (4000, 3000), interpolation=cv2.INTER_CUBIC)
        dst = folder / f"large_{i}.jpg"
        cv2.imwrite(str(dst), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(str(dst))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--large", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    seed_torch_cache()
    paths = [p for p, _ in caltech_split("train")][:: max(1, 6096 // args.images)][: args.images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        large = make_large_jpegs(paths[: args.large], Path(tmp))
        for backbone, weights in BACKBONES:
            for runtime in RUNTIMES:
                embedder = Embedder(
                    EmbedderConfig(backbone=backbone, weights=weights, batch_size=args.batch_size, runtime=runtime)
                )
                bare = bare_model_rate(embedder, len(paths))
                e2e = pipeline_rate(embedder, paths)
                e2e_large = pipeline_rate(embedder, large)
                rows.append(
                    {
                        "backbone": backbone,
                        "runtime": runtime,
                        "bare model img/s": bare,
                        "pipeline img/s (Caltech)": e2e,
                        "ratio (Caltech)": e2e / bare,
                        "pipeline img/s (12 MP)": e2e_large,
                        "ratio (12 MP)": e2e_large / bare,
                    }
                )
                print(rows[-1], flush=True)
    columns = list(rows[0])
    meta = {
        "images": len(paths),
        "large_images": len(large),
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
    }
    write_results("embed_speed", rows, markdown_table(rows, columns), meta)


if __name__ == "__main__":
    main()
