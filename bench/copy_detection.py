"""Copy detection: find the source photo of an edited copy among Caltech-101 train images.

    .venv/bin/python bench/copy_detection.py [--sources 200]

Queries are test images edited by known transforms at a mild and a strong setting; the database is
the 6,096 train images plus the unedited sources. Ground truth is known by construction. Reports
recall@1 and mAP (one relevant item: mean of 1/rank) per transform and stage.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from common import CACHE, caltech_split, markdown_table, seed_torch_cache, write_results
from features_cache import cnn_features, pixel_features
from retrieval_quality import exact_rankings

from revsearch import PCAReducer


def _rotate(im: np.ndarray, deg: float) -> np.ndarray:
    h, w = im.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(im, m, (w, h), borderValue=(0, 0, 0))


def _crop(im: np.ndarray, keep: float) -> np.ndarray:
    h, w = im.shape[:2]
    dy, dx = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    return im[dy : h - dy, dx : w - dx]


def _jitter(im: np.ndarray, amount: float) -> np.ndarray:
    hsv = cv2.cvtColor(im, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 30 * amount) % 180
    hsv[..., 1] *= 1 - amount
    hsv[..., 2] = hsv[..., 2] * (1 + amount)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    return np.clip((out - 128) * (1 - amount / 2) + 128, 0, 255).astype(np.uint8)


def _text(im: np.ndarray, big: bool) -> np.ndarray:
    out = im.copy()
    h, w = im.shape[:2]
    scale = w / 250 * (2.0 if big else 0.6)
    for i, line in enumerate(["COPYRIGHT", "revsearch", "2026"] if big else ["(c) photo"]):
        y = int(h * (0.35 + 0.25 * i)) if big else int(h * 0.92)
        cv2.putText(
            out,
            line,
            (int(w * 0.05), y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            max(1, int(3 * scale)),
            cv2.LINE_AA,
        )
    return out


def _border(im: np.ndarray, frac: float) -> np.ndarray:
    h, w = im.shape[:2]
    pad = int(max(h, w) * frac)
    out = cv2.copyMakeBorder(
        im, pad + (pad if frac > 0.15 else 0), pad, pad, pad, cv2.BORDER_CONSTANT, value=(235, 235, 235)
    )
    if frac > 0.15:  # a screenshot-like title bar
        out[:pad, :] = (60, 60, 60)
    return out


def _jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


TRANSFORMS = {
    "resize": (
        lambda im: cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
        lambda im: cv2.resize(im, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA),
    ),
    "jpeg": (lambda im: _jpeg(im, 50), lambda im: _jpeg(im, 8)),
    "crop": (lambda im: _crop(im, 0.8), lambda im: _crop(im, 0.5)),
    "rotation": (lambda im: _rotate(im, 5), lambda im: _rotate(im, 30)),
    "flip": (lambda im: im[:, ::-1], lambda im: im[::-1, ::-1]),
    "colour jitter": (lambda im: _jitter(im, 0.15), lambda im: _jitter(im, 0.45)),
    "blur": (lambda im: cv2.GaussianBlur(im, (0, 0), 1.0), lambda im: cv2.GaussianBlur(im, (0, 0), 4.0)),
    "text overlay": (lambda im: _text(im, False), lambda im: _text(im, True)),
    "border": (lambda im: _border(im, 0.05), lambda im: _border(im, 0.25)),
}


def make_queries(sources: list[str]) -> list[tuple[str, str, str, int]]:
    """Write (once) every edited copy; returns (path, transform, strength, source index)."""
    folder = CACHE / "copydet"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s, src in enumerate(sources):
        image = None
        for name, fns in TRANSFORMS.items():
            for strength, fn in zip(("mild", "strong"), fns):
                path = folder / f"{s:04d}_{name.replace(' ', '_')}_{strength}.png"
                if not path.exists():
                    image = cv2.imread(src) if image is None else image
                    cv2.imwrite(str(path), np.ascontiguousarray(fn(image)))
                out.append((str(path), name, strength, s))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=int, default=200)
    args = parser.parse_args()
    seed_torch_cache()
    train = [p for p, _ in caltech_split("train")]
    test = [p for p, lab in caltech_split("test") if lab != "BACKGROUND_Google"]
    sources = test[:: max(1, len(test) // args.sources)][: args.sources]
    queries = make_queries(sources)
    q_paths = [q[0] for q in queries]
    source_rows = np.array([len(train) + q[3] for q in queries])

    stages = {}
    stages["pixel 32x32"] = (np.concatenate([pixel_features(train), pixel_features(sources)]), pixel_features(q_paths))
    db = {
        k: np.concatenate([v, s])
        for (k, v), s in zip(
            cnn_features(train, "mobilenet_v2", "IMAGENET1K_V1").items(),
            cnn_features(sources, "mobilenet_v2", "IMAGENET1K_V1").values(),
        )
    }
    qf = cnn_features(q_paths, "mobilenet_v2", "IMAGENET1K_V1")
    stages["mobilenet_v2 avg"] = (db["avg"], qf["avg"])
    stages["mobilenet_v2 gem"] = (db["gem"], qf["gem"])
    pca = PCAReducer.fit(db["gem"][: len(train)], 128)
    stages["mobilenet_v2 gem + PCA-128"] = (pca.transform(db["gem"]), pca.transform(qf["gem"]))

    rank_of_source = {}
    for stage, (dbv, qv) in stages.items():
        order = exact_rankings(dbv, qv)
        rank_of_source[stage] = np.argmax(order == source_rows[:, None], axis=1) + 1
    rows = []
    for name in TRANSFORMS:
        for strength in ("mild", "strong"):
            sel = np.array([q[1] == name and q[2] == strength for q in queries])
            row = {"transform": f"{name} ({strength})"}
            for stage, ranks in rank_of_source.items():
                row[f"{stage} R@1"] = float((ranks[sel] == 1).mean())
                row[f"{stage} mAP"] = float((1.0 / ranks[sel]).mean())
            rows.append(row)
            print(row, flush=True)
    overall = {"transform": "all"}
    for stage, ranks in rank_of_source.items():
        overall[f"{stage} R@1"] = float((ranks == 1).mean())
        overall[f"{stage} mAP"] = float((1.0 / ranks).mean())
    rows.append(overall)
    columns = ["transform"] + [f"{s} {m}" for s in stages for m in ("R@1", "mAP")]
    write_results(
        "copy_detection",
        rows,
        markdown_table(rows, columns),
        {"sources": len(sources), "queries": len(queries), "database": len(train) + len(sources)},
    )


if __name__ == "__main__":
    main()
