"""Demo: index real photos shipped with scikit-image in Milvus Lite, query with edited copies.

Run ``scripts/demo.sh`` (it sets everything up first). Writes ``demo_out/result_*.jpg`` mosaics.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from revsearch import Embedder, EmbedderConfig, SearchIndex
from revsearch.cli.mosaic import make_mosaic, save_mosaic

PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "logo.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "phantom.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]


def edited_copy(image: np.ndarray, seed: int) -> np.ndarray:
    """A query derived from a photo: crop, rotate a little, change brightness, recompress."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    y, x = int(h * rng.uniform(0.03, 0.1)), int(w * rng.uniform(0.03, 0.1))
    crop = image[y : h - y, x : w - x]
    rot = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), rng.uniform(-8, 8), 1.0)
    crop = cv2.warpAffine(crop, rot, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REFLECT)
    crop = np.clip(crop.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 60])
    return cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="IMAGENET1K_V1")
    args = parser.parse_args()
    out = Path(args.out)
    library, queries = out / "library", out / "queries"
    for folder in (library, queries):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    data_dir = Path(skimage.data.__file__).parent
    for name in PHOTOS:
        shutil.copy(data_dir / name, library / name)
    for seed, name in enumerate(["chelsea.png", "rocket.jpg", "astronaut.png"]):
        image = cv2.imread(str(data_dir / name), cv2.IMREAD_COLOR)
        cv2.imwrite(str(queries / f"edited_{Path(name).stem}.jpg"), edited_copy(image, seed))

    embedder = Embedder(EmbedderConfig(backbone=args.backbone, weights=args.weights))
    index, report = SearchIndex.build(sorted(library.iterdir()), out / "index", backend="milvus", extractor=embedder)
    print(f"indexed {len(index)} photos in Milvus Lite ({report.summary()})")
    for query in sorted(queries.iterdir()):
        hits = index.query(query, k=5)
        print(f"\nquery {query.name}:")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank}. {Path(hit.key).name:28s} distance {hit.distance:.4f}")
        mosaic_path = out / f"result_{query.stem}.jpg"
        save_mosaic(mosaic_path, make_mosaic(cv2.cvtColor(cv2.imread(str(query)), cv2.COLOR_BGR2RGB), hits))
        print(f"  mosaic: {mosaic_path}")


if __name__ == "__main__":
    main()
