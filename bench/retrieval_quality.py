"""Class-level retrieval quality on Caltech-101: test images as queries against train images.

    .venv/bin/python bench/retrieval_quality.py

Relevant = same class (Faces_easy merged into Faces). BACKGROUND_Google images stay in the database
as distractors and are never queries. Reports mAP over the full ranking and precision@10 for each
stage; IVF and Milvus rows report the same metrics on their top-100 (unreturned items rank last).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
from common import Timer, caltech_split, markdown_table, seed_torch_cache, write_results
from features_cache import cnn_features, pixel_features

from revsearch import ExactIndex, IVFIndex, MilvusIndex, PCAReducer
from revsearch.errors import WeightsUnavailableError
from revsearch.index.hits import squared_l2

TOP = 100


def ranking_metrics(
    rankings: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray, n_relevant: np.ndarray
) -> tuple[float, float]:
    """mAP (AP normalised by all relevant items in the database) and precision@10."""
    rel = db_labels[rankings] == q_labels[:, None]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rankings.shape[1] + 1)
    ap = (rel * hits / ranks).sum(axis=1) / np.maximum(n_relevant, 1)
    return float(ap.mean()), float(rel[:, :10].mean())


def exact_rankings(db: np.ndarray, queries: np.ndarray, limit: int | None = None) -> np.ndarray:
    dist = squared_l2(queries.astype(db.dtype), db, np.einsum("ij,ij->i", db, db))
    order = np.argsort(dist, axis=1, kind="stable")
    return order[:, :limit] if limit else order


def hits_to_rankings(results, key_to_row: dict[str, int]) -> np.ndarray:
    out = np.full((len(results), TOP), -1, dtype=np.int64)
    for i, hits in enumerate(results):
        rows = [key_to_row[h.key] for h in hits[:TOP]]
        out[i, : len(rows)] = rows
    return out


def evaluate(name: str, db: np.ndarray, queries: np.ndarray, labels: tuple, note: str = "") -> dict:
    db_labels, q_labels, n_rel = labels
    full = exact_rankings(db, queries)
    m, p10 = ranking_metrics(full, db_labels, q_labels, n_rel)
    m100, _ = ranking_metrics(full[:, :TOP], db_labels, q_labels, n_rel)
    row = {"stage": name, "dim": db.shape[1], "mAP": m, "P@10": p10, "mAP@100": m100, "note": note}
    print(row, flush=True)
    return row


def evaluate_index(name: str, search, n_queries: int, labels: tuple, exact_top10: np.ndarray, note: str = "") -> dict:
    db_labels, q_labels, n_rel = labels
    with Timer() as t:
        rankings = search()
    padded_labels = np.append(db_labels, "__none__")  # row -1 (not returned) is never relevant
    m100, p10 = ranking_metrics(rankings, padded_labels, q_labels, n_rel)
    recall = np.mean([len(set(r[:10]) & set(e)) / 10 for r, e in zip(rankings, exact_top10)])
    row = {
        "stage": name,
        "mAP": "",
        "P@10": p10,
        "mAP@100": m100,
        "recall@10 vs exact": float(recall),
        "note": f"{note}; {1000 * t.seconds / n_queries:.2f} ms/query (batched)",
    }
    print(row, flush=True)
    return row


def class_retrieval_task() -> tuple[list[str], list[str], tuple]:
    """Database paths (train), query paths (test, without BACKGROUND_Google) and the labels tuple
    (database labels with BACKGROUND_Google as distractors, query labels, relevant count per query)."""
    train = caltech_split("train")
    test = [(p, lab) for p, lab in caltech_split("test") if lab != "BACKGROUND_Google"]
    db_paths, db_lab = zip(*train)
    q_paths, q_lab = zip(*test)
    db_labels = np.array([lab if lab != "BACKGROUND_Google" else "__distractor__" for lab in db_lab])
    q_labels = np.array(q_lab)
    counts = {lab: int((db_labels == lab).sum()) for lab in set(q_labels)}
    return list(db_paths), list(q_paths), (db_labels, q_labels, np.array([counts[lab] for lab in q_labels]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pca-dims", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    seed_torch_cache()
    db_paths, q_paths, labels = class_retrieval_task()
    rows = []

    pix_db, pix_q = pixel_features(list(db_paths)), pixel_features(list(q_paths))
    rows.append(evaluate("pixel 32x32", pix_db, pix_q, labels, "baseline"))

    for backbone, weights in [("mobilenet_v2", "IMAGENET1K_V1"), ("resnet50", "DEFAULT")]:
        try:
            db, q = cnn_features(list(db_paths), backbone, weights), cnn_features(list(q_paths), backbone, weights)
        except WeightsUnavailableError:
            rows.append({"stage": f"{backbone}", "note": "pretrained weights not available here: not measured"})
            continue
        for pooling in ("avg", "gem"):
            rows.append(evaluate(f"{backbone} {pooling}", db[pooling], q[pooling], labels))
            for dim in args.pca_dims:
                for whiten in (False, True):
                    pca = PCAReducer.fit(db[pooling], dim, whiten)
                    label = f"{backbone} {pooling} + PCA-{dim}{' whitened' if whiten else ''}"
                    rows.append(evaluate(label, pca.transform(db[pooling]), pca.transform(q[pooling]), labels))
        if backbone != "mobilenet_v2":
            continue
        pca = PCAReducer.fit(db["gem"], 128)
        dbv, qv = pca.transform(db["gem"]), pca.transform(q["gem"])
        exact_top10 = exact_rankings(dbv, qv, 10)
        keys = [str(i) for i in range(len(dbv))]
        key_to_row = {k: i for i, k in enumerate(keys)}
        ivf = IVFIndex.fit(dbv, n_clusters=64)
        ivf.add(keys, dbv)
        for nprobe in (1, 2, 4, 8, 16, 64):
            _, scanned = ivf.search_with_stats(qv[:200], TOP, nprobe)
            rows.append(
                evaluate_index(
                    f"gem + PCA-128, K-means IVF nprobe={nprobe}/64",
                    lambda: hits_to_rankings(ivf.search(qv, TOP, nprobe=nprobe), key_to_row),  # noqa: B023 (called now)
                    len(qv),
                    labels,
                    exact_top10,
                    f"scans {100 * scanned:.0f}% of vectors",
                )
            )
        exact = ExactIndex(dbv.shape[1])
        exact.add(keys, dbv)
        rows.append(
            evaluate_index(
                "gem + PCA-128, exact (numpy)",
                lambda: hits_to_rankings(exact.search(qv, TOP), key_to_row),  # noqa: B023 (called now)
                len(qv),
                labels,
                exact_top10,
                "reference for the index rows",
            )
        )
        with tempfile.TemporaryDirectory() as tmp:
            milvus = MilvusIndex(dbv.shape[1], "quality", uri=f"{tmp}/q.db")
            milvus.add(keys, dbv)
            rows.append(
                evaluate_index(
                    "gem + PCA-128, Milvus Lite FLAT",
                    lambda: hits_to_rankings(milvus.search(qv, TOP), key_to_row),  # noqa: B023 (called now)
                    len(qv),
                    labels,
                    exact_top10,
                    "milvus-lite 2.5.1",
                )
            )
            milvus.close()
    meta = {"database": len(db_paths), "queries": len(q_paths)}
    columns = ["stage", "dim", "mAP", "P@10", "mAP@100", "recall@10 vs exact", "note"]
    write_results("retrieval_quality", rows, markdown_table(rows, columns), meta)


if __name__ == "__main__":
    main()
