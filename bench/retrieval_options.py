"""Retrieval options past the seed: multi-scale GeM, alpha-QE, alpha-DBA, and pixel + CNN fusion for copies.

    .venv/bin/python bench/retrieval_options.py

Class-level retrieval (Caltech-101, test images against train images, as bench/retrieval_quality.py)
is reported separately on two halves of the classes: parameters are chosen on half A (classes at
even positions in sorted order) and reported on half B (odd positions), so no number of half B was
used to choose anything. Copy detection (bench/copy_detection.py's edited copies) is split the same
way by source (even / odd). Latency: single queries on 100,000 synthetic unit vectors (128-d, the
PCA output size) and the index-side build cost of DBA; embedding cost per scale from a timed pass.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import RESULTS, Timer, caltech_split, markdown_table, seed_torch_cache, write_results
from copy_detection import TRANSFORMS, make_queries
from features_cache import CACHED_SCALES, multiscale_features, pixel_features
from retrieval_quality import class_retrieval_task, ranking_metrics

from revsearch import EmbedderConfig, ExactIndex, PCAReducer, load_image
from revsearch.features.multiscale import MultiScaleEmbedder
from revsearch.features.pca import l2_normalize
from revsearch.index.hits import Hit
from revsearch.retrieval.dba import DBAGraph, augment, nearest_others
from revsearch.retrieval.fusion import fuse_hits, ratio_fusion
from revsearch.retrieval.options import COPY_PIXEL_WEIGHT, COPY_REF_RANK
from revsearch.retrieval.query_expansion import expand, expanded_search

ALPHA = 3.0  # Radenović et al. 2018, for both alpha-QE and alpha-DBA
SCALE_SETS = {
    "1": (1.0,),
    "1, 1/√2, 1/2": (1.0, 2**-0.5, 0.5),
    "√2": (2**0.5,),
    "√2, 1, 1/√2": (2**0.5, 1.0, 2**-0.5),
    "√2, 1": (2**0.5, 1.0),
    "√2, 1, 1/√2, 1/2": CACHED_SCALES,
}
NS = (1, 2, 3, 5, 10)
GRID = (1, 2, 3, 5)


def multiscale(per_scale: dict[float, np.ndarray], scales: tuple[float, ...]) -> np.ndarray:
    return l2_normalize(np.mean([per_scale[s] for s in scales], axis=0))


def dba(db: np.ndarray, n: int) -> np.ndarray:
    if n == 0:
        return db
    rows = np.arange(len(db))
    return augment(db, nearest_others(db, db, n, rows), rows, ALPHA)


def qe(db: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    if n == 0:
        return q
    return expand(q, db[nearest_others(q, db, n)], ALPHA)


def rankings(db: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.argsort(-(q @ db.T), axis=1, kind="stable")


# ---- class-level retrieval ------------------------------------------------------------------
def class_rows(args) -> tuple[list[dict], dict]:
    db_paths, q_paths, (db_labels, q_labels, n_rel) = class_retrieval_task()
    classes = sorted(set(q_labels))
    half_a = {c for i, c in enumerate(classes) if i % 2 == 0}
    in_a = np.array([lab in half_a for lab in q_labels])
    db_ms, q_ms = multiscale_features(db_paths), multiscale_features(q_paths)

    def score(db: np.ndarray, q: np.ndarray) -> dict:
        order = rankings(db, q)
        out = {}
        for name, sel in (("A", in_a), ("B", ~in_a), ("all", np.ones_like(in_a))):
            m, p10 = ranking_metrics(order[sel], db_labels, q_labels[sel], n_rel[sel])
            out[f"mAP {name}"], out[f"P@10 {name}"] = m, p10
        return out

    rows = []

    def run(scales: str, dba_n: int, qe_n: int, pca: bool = True) -> dict:
        db, q = multiscale(db_ms, SCALE_SETS[scales]), multiscale(q_ms, SCALE_SETS[scales])
        if pca:
            reducer = PCAReducer.fit(db, 128)
            db, q = reducer.transform(db), reducer.transform(q)
        db = dba(db, dba_n)
        q = qe(db, q, qe_n)
        row = {"scales": scales, "PCA": 128 if pca else "-", "DBA n": dba_n, "αQE n": qe_n, **score(db, q)}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        return row

    run("1", 0, 0, pca=False)
    base = run("1", 0, 0)
    for scales in SCALE_SETS:
        if scales != "1":
            run(scales, 0, 0)
    for n in NS:
        run("1", n, 0)
    for n in NS:
        run("1", 0, n)
    # the scale set with the best half-A mAP, then the (DBA n, alpha-QE n) grid on it and on scale 1
    best_scales = max(
        (r for r in rows if r["DBA n"] == 0 and r["αQE n"] == 0 and r["PCA"] == 128), key=lambda r: r["mAP A"]
    )["scales"]
    for scales in dict.fromkeys(["1", best_scales]):
        for n in GRID:
            for m in GRID:
                run(scales, n, m)
    # the default: single scale (multi-scale costs 3x the embedding time for every image indexed or
    # queried), and n <= 3 for both: with 3 relevant images per query larger n lose (sparse rows)
    chosen = max(
        (r for r in rows if r["scales"] == "1" and r["PCA"] == 128 and 0 < r["DBA n"] <= 3 and 0 < r["αQE n"] <= 3),
        key=lambda r: r["mAP A"],
    )
    meta = {
        "database": len(db_paths),
        "queries": len(q_paths),
        "queries half A": int(in_a.sum()),
        "queries half B": int((~in_a).sum()),
        "classes half A": sorted(half_a),
        "alpha": ALPHA,
        "baseline": base,
        "chosen on half A": chosen,
    }
    return rows, meta


# ---- robustness: few relevant images per query ----------------------------------------------
def sparse_rows(args) -> list[dict]:
    """Caltech with at most ``m`` database images per class (distractors all kept): how the options
    behave when a query has few relevant images, as in instance search or a personal photo folder.
    PCA as the library applies it ("auto": only from 1,000 database images up)."""
    db_paths, q_paths, (db_labels, q_labels, _) = class_retrieval_task()
    db_all, q_all = multiscale_features(db_paths)[1.0], multiscale_features(q_paths)[1.0]
    rows = []
    for m in args.sparse:
        seen: dict[str, int] = {}
        keep = []
        for i, lab in enumerate(db_labels):
            seen[lab] = seen.get(lab, 0) + 1
            if lab == "__distractor__" or seen[lab] <= m:
                keep.append(i)
        db, labels = db_all[keep], db_labels[keep]
        n_rel = np.array([min(m, int((labels == lab).sum())) for lab in q_labels])
        q = q_all
        if len(db) >= 1000:
            reducer = PCAReducer.fit(db, 128)
            db, q = reducer.transform(db), reducer.transform(q)
        for dba_n, qe_n in [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 0),
            (5, 0),
            (10, 0),
            (0, 1),
            (0, 2),
            (0, 3),
            (0, 5),
            (0, 10),
            (1, 1),
            (1, 2),
            (2, 2),
            (3, 3),
            (5, 5),
            (10, 10),
        ]:
            dbv = dba(db, dba_n)
            order = rankings(dbv, qe(dbv, q, qe_n))
            mean_ap, p10 = ranking_metrics(order, labels, q_labels, n_rel)
            row = {
                "database images per class": m,
                "database": len(db),
                "DBA n": dba_n,
                "αQE n": qe_n,
                "mAP": mean_ap,
                "P@10": p10,
            }
            rows.append(row)
            print(row, flush=True)
    return rows


# ---- copy detection -------------------------------------------------------------------------
def _top(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, distances) of the k nearest, nearest first, per query."""
    part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(dist, part, axis=1)
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(d, order, axis=1)


def _fuse(cnn: tuple, pixel: tuple, how: str, param: int, width: int, weight: float = 1.0) -> np.ndarray:
    """Fused rankings (rows, -1 padded) of every query with rank fusion or ratio fusion."""
    out = np.full((len(cnn[0]), width), -1, dtype=np.int64)
    for i in range(len(cnn[0])):
        lists = [[Hit(str(r), float(d)) for r, d in zip(rows[i], dist[i])] for rows, dist in (cnn, pixel)]
        hits = fuse_hits(lists, width, param) if how == "RRF" else ratio_fusion(lists, width, param, [1.0, weight])
        out[i, : len(hits)] = [int(h.key) for h in hits]
    return out


def copy_rows(args, options: list[tuple[str, str, int, int]]) -> tuple[list[dict], dict]:
    """options: (label, scales, dba n, qe n) for the CNN side; fused with the thumbnails where qe n is 0
    (the copy mode searches without alpha-QE)."""
    train = [p for p, _ in caltech_split("train")]
    test = [p for p, lab in caltech_split("test") if lab != "BACKGROUND_Google"]
    sources = test[:: max(1, len(test) // args.sources)][: args.sources]
    queries = make_queries(sources)
    q_paths = [q[0] for q in queries]
    source_row = np.array([len(train) + q[3] for q in queries])
    half_a = np.array([q[3] % 2 == 0 for q in queries])
    db_ms = {
        s: np.concatenate([a, b])
        for (s, a), b in zip(multiscale_features(train).items(), multiscale_features(sources).values())
    }
    q_ms = multiscale_features(q_paths)
    pix = {}
    for size in (16, 32):
        pdb = np.concatenate([pixel_features(train, size), pixel_features(sources, size)]).astype(np.float32)
        pq = pixel_features(q_paths, size).astype(np.float32)
        pix[size] = _top((pq**2).sum(1)[:, None] - 2 * pq @ pdb.T + (pdb**2).sum(1)[None, :], args.top)

    def cnn_top(scales: str, dba_n: int, qe_n: int) -> tuple[np.ndarray, np.ndarray]:
        db, q = multiscale(db_ms, SCALE_SETS[scales]), multiscale(q_ms, SCALE_SETS[scales])
        reducer = PCAReducer.fit(db, 128)  # as the library: fitted on the indexed vectors
        db, q = dba(reducer.transform(db), dba_n), reducer.transform(q)
        return _top(2 - 2 * qe(db, q, qe_n) @ db.T, args.top)

    def rank_of_source(order: np.ndarray) -> np.ndarray:
        hit = order == source_row[:, None]
        return np.where(hit.any(axis=1), np.argmax(hit, axis=1) + 1, np.inf)

    stages: dict[str, np.ndarray] = {f"pixel {s}": rank_of_source(pix[s][0]) for s in pix}
    for label, scales, dba_n, qe_n in options:
        cnn = cnn_top(scales, dba_n, qe_n)
        stages[f"CNN {label}"] = rank_of_source(cnn[0])
        if qe_n:
            continue
        for size in (16, 32):
            for how, param, weight in (
                ("RRF", 1, 1),
                ("RRF", 10, 1),
                ("RRF", 60, 1),
                ("ratio", 5, 1),
                ("ratio", 10, 1),
                ("ratio", 50, 1),
                ("ratio", 5, 1.5),
                ("ratio", 5, 2),
                ("ratio", 5, 3),
            ):
                name = (
                    f"{label} + pixel {size}, RRF k={param}"
                    if how == "RRF"
                    else f"{label} + pixel {size}, ratio ref rank={param} pixel weight={weight}"
                )
                stages[name] = rank_of_source(_fuse(cnn, pix[size], how, param, args.top, weight))
    rows = []
    for name in TRANSFORMS:
        for strength in ("mild", "strong"):
            sel = np.array([q[1] == name and q[2] == strength for q in queries])
            row = {"transform": f"{name} ({strength})"}
            row.update({stage: float((ranks[sel] == 1).mean()) for stage, ranks in stages.items()})
            rows.append(row)
    summary = []
    for stage, ranks in stages.items():
        out = {"stage": stage}
        for part, sel in (("A", half_a), ("B", ~half_a), ("all", np.ones_like(half_a))):
            for strength in ("mild", "strong"):
                s = sel & np.array([q[2] == strength for q in queries])
                out[f"{strength} R@1 {part}"] = float((ranks[s] == 1).mean())
                out[f"{strength} mAP {part}"] = float((1 / ranks[s]).mean())
        summary.append(out)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}, flush=True)
    meta = {
        "sources": len(sources),
        "queries": len(queries),
        "database": len(train) + len(sources),
        "fusion top-K per ranking": args.top,
        "summary": summary,
    }
    return rows, meta


# ---- latency --------------------------------------------------------------------------------
def latency_rows(args) -> list[dict]:
    rng = np.random.default_rng(0)
    db = l2_normalize(rng.standard_normal((args.n, 128)).astype(np.float32))
    queries = l2_normalize(db[rng.choice(args.n, args.queries)] + 0.5 * rng.standard_normal((args.queries, 128)))
    keys = [str(i) for i in range(args.n)]
    index = ExactIndex(128)
    index.add(keys, db)

    def fetch(ks: list[str]) -> np.ndarray:
        return index.store.vectors[index.store.rows_of(ks)]

    def interleaved(fns: dict[str, object]) -> dict[str, float]:
        """Median ms per query of each fn, run in turn on each query (so load changes hit all alike)."""
        times: dict[str, list[float]] = {name: [] for name in fns}
        for q in queries:
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(q[None, :])
                times[name].append(time.perf_counter() - start)
        return {name: 1000 * float(np.median(t)) for name, t in times.items()}

    fns = {"search k=10 (today's default)": lambda q: index.search(q, 10)}
    for n in (1, 2, 3, 5, 10):
        fns[f"αQE n={n}: search k={n}, expand, search k=10"] = lambda q, n=n: expanded_search(
            index.search, fetch, q, 10, n, ALPHA
        )
    rows = [{"operation": name, "ms": ms} for name, ms in interleaved(fns).items()]
    pixels = rng.integers(0, 256, (args.n, 3 * 16 * 16)).astype(np.float32)
    pix_index = ExactIndex(pixels.shape[1], np.float32)
    pix_index.add(keys, pixels)
    pixel_queries = iter(pixels[rng.choice(args.n, len(queries))])
    rows += [
        {"operation": name, "ms": ms}
        for name, ms in interleaved(
            {
                "pixel 16x16 search k=100 (copy mode's second ranking)": lambda q: pix_index.search(
                    next(pixel_queries)[None], 100
                )
            }
        ).items()
    ]
    for n in args.dba_ns:
        graph = DBAGraph(n, ALPHA, 128)
        with Timer() as t:
            graph.update(keys, db)
            graph.augmented()
        rows.append({"operation": f"DBA n={n}: build over {args.n:,} vectors (once)", "ms": 1000 * t.seconds})
        with Timer() as t:
            changed = graph.update([f"new{i}" for i in range(100)], queries[:100])
        rows.append(
            {
                "operation": f"DBA n={n}: add 100 vectors ({len(changed)} augmented vectors rewritten)",
                "ms": 1000 * t.seconds,
            }
        )
        with Timer() as t:
            changed = graph.update([], np.empty((0, 128), np.float32), keys[:100])
        rows.append({"operation": f"DBA n={n}: remove 100 vectors ({len(changed)} rewritten)", "ms": 1000 * t.seconds})
    images = [load_image(p, min_side=320) for p, _ in caltech_split("test")[: args.embed_images]]
    for label in ("1", "1, 1/√2, 1/2", "√2, 1, 1/√2"):
        embedder = MultiScaleEmbedder(
            EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1"), scales=SCALE_SETS[label]
        )
        embedder.embed_images(images[:2])  # warm-up
        rows.append(
            {
                "operation": f"embed one query image, scales {label} (MobileNetV2, ONNX Runtime)",
                "ms": per_query_images(embedder, images),
            }
        )
    for row in rows:
        print(row, flush=True)
    return rows


def per_query_images(embedder, images) -> float:
    times = []
    for image in images:
        start = time.perf_counter()
        embedder.embed_images([image])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def write_summary() -> None:
    """retrieval_options.json: the defaults and the goal figures, read from the parts' results."""
    part = {
        name: json.loads((RESULTS / f"retrieval_options_{name}.json").read_text())
        for name in ("class", "copy_summary", "latency")
    }
    chosen = part["class"]["meta"]["chosen on half A"]
    copy = {r["stage"]: r for r in part["copy_summary"]["rows"]}
    latency = {r["operation"]: r["ms"] for r in part["latency"]["rows"]}
    copy_default = f"scales 1 + pixel 16, ratio ref rank={COPY_REF_RANK} pixel weight={COPY_PIXEL_WEIGHT}"
    search = latency["search k=10 (today's default)"]
    expanded = latency[f"αQE n={chosen['αQE n']}: search k={chosen['αQE n']}, expand, search k=10"]
    embed = latency["embed one query image, scales 1 (MobileNetV2, ONNX Runtime)"]
    summary = {
        "defaults": {
            "scales": chosen["scales"],
            "dba_n": chosen["DBA n"],
            "qe_n": chosen["αQE n"],
            "alpha": ALPHA,
            "copy mode": copy_default,
        },
        "class mAP": {"today": part["class"]["meta"]["baseline"], "default": chosen},
        "copy R@1": {"today (CNN)": copy["CNN scales 1"], "copy mode default": copy[copy_default]},
        "latency ms": {
            "search": search,
            "search with αQE": expanded,
            "ratio": expanded / search,
            "end to end ratio (with the query's embedding)": (embed + expanded) / (embed + search),
        },
    }
    (RESULTS / "retrieval_options.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["latency ms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--top", type=int, default=100, help="top-K of each ranking fused in copy mode")
    parser.add_argument("--n", type=int, default=100_000, help="synthetic vectors for the latency rows")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-images", type=int, default=30, help="query images timed per scale set")
    parser.add_argument("--dba-ns", type=int, nargs="+", default=[1], help="DBA n for the build-time rows")
    parser.add_argument("--parts", nargs="+", default=["class", "sparse", "copy", "latency"])
    parser.add_argument("--sparse", type=int, nargs="+", default=[3, 10], help="database images per class")
    args = parser.parse_args()
    seed_torch_cache()
    results = {}
    if "class" in args.parts:
        rows, meta = class_rows(args)
        results["class"] = {"rows": rows, "meta": meta}
        cols = ["scales", "PCA", "DBA n", "αQE n", "mAP A", "P@10 A", "mAP B", "P@10 B", "mAP all", "P@10 all"]
        write_results("retrieval_options_class", rows, markdown_table(rows, cols), meta)
    if "sparse" in args.parts:
        rows = sparse_rows(args)
        write_results(
            "retrieval_options_sparse",
            rows,
            markdown_table(rows, list(rows[0])),
            {"note": "test queries of all classes; database: first m train images per class + distractors"},
        )
    if "copy" in args.parts:
        chosen = json.loads((RESULTS / "retrieval_options_class.json").read_text())["meta"]["chosen on half A"]
        dba_n, qe_n = chosen["DBA n"], chosen["αQE n"]
        options = [
            ("scales 1", "1", 0, 0),
            (f"scales 1 + DBA {dba_n}", "1", dba_n, 0),
            ("scales √2, 1", "√2, 1", 0, 0),
            (f"similar mode: scales 1 + DBA {dba_n} + αQE {qe_n}", "1", dba_n, qe_n),
        ]
        rows, meta = copy_rows(args, options)
        write_results("retrieval_options_copy", rows, markdown_table(rows, list(rows[0])), meta)
        cols = ["stage"] + [f"{s} {m} {p}" for p in ("A", "B", "all") for s in ("mild", "strong") for m in ("R@1",)]
        write_results("retrieval_options_copy_summary", meta["summary"], markdown_table(meta["summary"], cols), {})
    if "latency" in args.parts:
        rows = latency_rows(args)
        write_results(
            "retrieval_options_latency",
            rows,
            markdown_table(rows, ["operation", "ms"]),
            {"vectors": args.n, "dim": 128, "queries": args.queries, "statistic": "median per query"},
        )
    write_summary()


if __name__ == "__main__":
    main()
