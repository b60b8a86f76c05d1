"""Copy mode with query-time turns: is an edited copy found more often when the query is also
searched turned 180 degrees (or mirrored), each key at its nearest turn?

    cd bench && ../.venv/bin/python copy_augmentation.py

Same sources, edited copies and database as the copy part of ``retrieval_options.py`` (200 Caltech
test images x 18 edits, against the train images plus the sources), MobileNetV2 (ImageNet weights)
GeM at scale 1, PCA-128 fitted on the database, fused with the 16x16 thumbnails exactly as the
library's copy mode (:func:`revsearch.retrieval.fusion.ratio_fusion`, ref rank 5, thumbnail weight 1.5, top
100 of each). Chosen on half A of the sources (even positions), reported on half B as well.
"""

from __future__ import annotations

import numpy as np
from common import CACHE, caltech_split, markdown_table, seed_torch_cache, write_results
from copy_detection import TRANSFORMS, make_queries
from features_cache import pixel_features

from revsearch import Embedder, EmbedderConfig, PCAReducer, load_image
from revsearch.index.hits import Hit
from revsearch.retrieval.fusion import ratio_fusion
from revsearch.retrieval.options import COPY_PIXEL_WEIGHT, COPY_REF_RANK, COPY_TOP

TURNS = {
    "turned 180": lambda im: im[::-1, ::-1],
    "mirrored": lambda im: im[:, ::-1],
}
VARIANTS = {  # name: the turns searched besides the query itself
    "copy mode, query only": (),
    "+ turned 180": ("turned 180",),
    "+ mirrored": ("mirrored",),
    "+ turned 180 + mirrored": ("turned 180", "mirrored"),
}


def turned_features(embedder: Embedder, paths: list[str], turns: dict) -> dict[str, np.ndarray]:
    """{"image" | turn name: (n, dim)} embeddings of ``paths`` as they are and turned, cached in
    bench/cache."""
    file = CACHE / f"copy_turns_{embedder.digest[:12]}_{len(paths)}_{'_'.join(t[:3] for t in turns)}.npz"
    if file.exists():
        with np.load(file) as cached:
            return dict(cached)
    out: dict[str, list[np.ndarray]] = {"image": [], **{t: [] for t in turns}}
    for start in range(0, len(paths), 64):
        images = [load_image(p) for p in paths[start : start + 64]]
        out["image"].append(embedder.embed_images(images))
        for name, turn in turns.items():
            out[name].append(embedder.embed_images([np.ascontiguousarray(turn(im)) for im in images]))
    features = {k: np.concatenate(v) for k, v in out.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(file, **features)
    return features


def top(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(dist, part, axis=1)
    order = np.argsort(d, axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(d, order, axis=1)


def main() -> None:
    seed_torch_cache()
    train = [p for p, _ in caltech_split("train")]
    test = [p for p, lab in caltech_split("test") if lab != "BACKGROUND_Google"]
    sources = test[:: max(1, len(test) // 200)][:200]
    queries = make_queries(sources)
    source_row = np.array([len(train) + q[3] for q in queries])
    embedder = Embedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1", batch_size=32))
    database = turned_features(embedder, train + sources, {})["image"]
    features = turned_features(embedder, [q[0] for q in queries], TURNS)
    reducer = PCAReducer.fit(database, 128)
    db = reducer.transform(database)
    cnn_dist = {k: 2 - 2 * reducer.transform(v) @ db.T for k, v in features.items()}
    pdb = pixel_features(train + sources, 16).astype(np.float32)
    pq = pixel_features([q[0] for q in queries], 16).astype(np.float32)
    pixel = top((pq**2).sum(1)[:, None] - 2 * pq @ pdb.T + (pdb**2).sum(1)[None, :], COPY_TOP)

    def found_first(turns: tuple[str, ...]) -> np.ndarray:
        dist = np.minimum.reduce([cnn_dist["image"], *(cnn_dist[t] for t in turns)])
        cnn = top(dist, COPY_TOP)
        ok = []
        for i in range(len(queries)):
            lists = [[Hit(str(r), float(d)) for r, d in zip(rows[i], ds[i])] for rows, ds in (cnn, pixel)]
            ok.append(int(ratio_fusion(lists, 1, COPY_REF_RANK, [1.0, COPY_PIXEL_WEIGHT])[0].key) == source_row[i])
        return np.array(ok)

    strong = np.array([q[2] == "strong" for q in queries])
    half_a = np.array([q[3] % 2 == 0 for q in queries])
    results = {name: found_first(turns) for name, turns in VARIANTS.items()}
    rows = []
    for name, ok in results.items():
        row = {"variant": name}
        for part, sel in (("A", half_a), ("B", ~half_a), ("all", np.ones_like(half_a))):
            row[f"mild R@1 {part}"] = float(ok[sel & ~strong].mean())
            row[f"strong R@1 {part}"] = float(ok[sel & strong].mean())
        for edit in TRANSFORMS:
            sel = np.array([q[1] == edit and q[2] == "strong" for q in queries])
            row[f"{edit} (strong)"] = float(ok[sel].mean())
        rows.append(row)
    columns = ["variant"] + [f"{s} R@1 {p}" for p in ("A", "B", "all") for s in ("mild", "strong")]
    columns += [f"{edit} (strong)" for edit in TRANSFORMS]
    meta = {"sources": len(sources), "queries": len(queries), "database": len(db), "fusion top-K": COPY_TOP}
    write_results("copy_augmentation", rows, markdown_table(rows, columns), meta)


if __name__ == "__main__":
    main()
