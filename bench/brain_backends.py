"""k=10 query latency of FiftyOne Brain similarity backends on the same synthetic vectors.

    cd bench && ../.venv/bin/python brain_backends.py [--sizes 10000 100000] [--dim 128] [--queries 30]

For each size N, one FiftyOne dataset of N dummy samples gets one brain run per backend, all built
from the same clustered unit vectors (``synthetic()`` from vector_search.py) with
``fob.compute_similarity(dataset, embeddings=<array>, backend=...)``:

- revsearch (our backend, ``revsearch.fiftyone.brain``), ``index_kind="milvus"`` (Milvus Lite file,
  FLAT) and ``index_kind="kmeans"`` (in-memory IVF, default clusters / nprobe). The Milvus index is
  timed twice: as used (the store opens the Lite file, i.e. starts a Lite server, for every
  operation and stops it afterwards, so other processes can use the file) and with the file held
  open across the queries (``results._handle.hold()``);
- fiftyone-brain's ``sklearn`` backend (cosine; its view path is a brute-force ``pairwise_distances``);
- fiftyone-brain's ``milvus`` backend on a Milvus Lite file: as shipped (it hard-codes an HNSW index,
  which Milvus Lite rejects, so this row records the error) and with a FLAT index (a config subclass
  defined here, passed as ``backend=<class>``; dot product, the backend's default metric);
- exact numpy (dot product + argpartition) as the reference, and the same FiftyOne ``select``
  + ``values("id")`` round trip that the other "view" timings include.

Per backend: build time (``compute_similarity`` wall time), latency of the first query (cold:
opening files / fitting helpers), then p50 / p99 single-query latency of

- "view": ``dataset.sort_by_similarity(vec, k=10, brain_key=...).values("id")`` (what the App and
  users pay: backend kNN + a Mongo query that returns the 10 ids in order), and
- "raw": ``results._kneighbors(query=vec, k=10)`` (the backend's kNN only),

and recall@10 of each path's ids against exact numpy (the sklearn backend's raw path searches
embeddings it has mean-centred, while the query is not, so its raw recall is below 1). The vectors
are unit-norm, so cosine, dot product and L2 rank identically. Slow backends stop after
``--budget-s`` seconds per timing loop (at least ``--min-queries`` queries); the ``queries``
column says how many were timed.
Datasets, brain runs (and their Milvus collections) and the temp dir are deleted at the end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import tempfile
import time
import traceback
import uuid
import warnings

import fiftyone as fo  # noqa: E402
import fiftyone.brain as fob  # noqa: E402
import numpy as np
from common import Timer, markdown_table, write_results
from fiftyone.brain.internal.core.milvus import MilvusSimilarity, MilvusSimilarityConfig  # noqa: E402
from vector_search import synthetic

import revsearch.fiftyone.brain  # noqa: E402,F401  (registers backend="revsearch")

K = 10


class FlatMilvusSimilarityConfig(MilvusSimilarityConfig):
    """fiftyone-brain's milvus backend with a FLAT index: it hard-codes HNSW, which Milvus Lite
    (local mode: FLAT / IVF_FLAT / AUTOINDEX only) rejects. Passed as ``backend=<this class>``."""

    @property
    def index_params(self):
        return {"metric_type": "IP", "index_type": "FLAT", "params": {}}

    @property
    def search_params(self):
        return {"metric_type": "IP", "params": {}}


class FlatMilvusSimilarity(MilvusSimilarity):
    """Found by FiftyOne from the config's class name (``...Config`` minus ``Config``)."""


#: (label, brain key, compute_similarity kwargs; "{tmp}" is replaced by the temp dir).
BACKENDS = [
    (
        "revsearch milvus (Lite, FLAT)",
        "rs_milvus",
        {"backend": "revsearch", "index_kind": "milvus", "uri": "{tmp}/rs_milvus.db"},
    ),
    ("revsearch kmeans (IVF)", "rs_kmeans", {"backend": "revsearch", "index_kind": "kmeans"}),
    ("fob sklearn (cosine)", "fob_sklearn", {"backend": "sklearn"}),
    ("fob milvus (Lite, its default HNSW)", "fob_milvus", {"backend": "milvus", "uri": "{tmp}/fob_milvus.db"}),
    (
        "fob milvus (Lite, FLAT patch)",
        "fob_milvus_flat",
        {"backend": FlatMilvusSimilarityConfig, "uri": "{tmp}/fob_milvus_flat.db"},
    ),
]


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed_loop(fn, queries: np.ndarray, budget_s: float, min_queries: int) -> tuple[list[float], list]:
    """Run ``fn(q)`` for each query until the budget is spent; (latencies ms, outputs)."""
    ms, outs = [], []
    start = time.perf_counter()
    for i, q in enumerate(queries):
        if i >= min_queries and time.perf_counter() - start > budget_s:
            break
        with Timer() as t:
            outs.append(fn(q))
        ms.append(1000 * t.seconds)
    return ms, outs


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def measure(
    dataset,
    results,
    key: str,
    queries: np.ndarray,
    truth: list[list[str]],
    budget_s: float,
    min_queries: int,
    label: str,
) -> dict:
    """First-query latency, then view and raw latency percentiles and recall@10 of each path."""

    def view(q):
        return list(dataset.sort_by_similarity(q, k=K, brain_key=key).values("id"))

    def raw(q):
        return [str(i) for i in results._kneighbors(query=q, k=K)[0]]

    with Timer() as t:
        view(queries[0])
    first_ms = 1000 * t.seconds
    # view first: fiftyone-brain's sklearn raw path centres its stored embeddings in place
    view_ms, found = timed_loop(view, queries, budget_s, min_queries)
    raw_ms, raw_found = timed_loop(raw, queries, budget_s, min_queries)
    m = min(len(found), len(raw_found))
    if found[:m] != raw_found[:m]:
        print(f"  note: {label}: view and raw ids differ for some queries", flush=True)
    return {
        "first q ms": first_ms,
        "queries": len(view_ms),
        **dict(zip(("view p50 ms", "view p99 ms"), percentiles(view_ms))),
        **dict(zip(("raw p50 ms", "raw p99 ms"), percentiles(raw_ms))),
        "recall@10": recall(found, truth),
        "raw recall@10": recall(raw_found, truth),
    }


def make_dataset(n: int) -> fo.Dataset:
    dataset = fo.Dataset(f"bench-brain-{n}-{uuid.uuid4().hex[:8]}")
    dataset.add_samples([fo.Sample(filepath=f"/synthetic/{i}.jpg") for i in range(n)], progress=False)
    return dataset


def bench_size(
    n: int, dim: int, n_queries: int, budget_s: float, min_queries: int, tmp: str, errors: list[str]
) -> list[dict]:
    data = synthetic(n, dim)
    queries = synthetic(n_queries, dim, seed=1) * 0.3 + data[:n_queries] * 0.7
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    rows: list[dict] = []

    with Timer() as t:
        dataset = make_dataset(n)
    ids = np.array(dataset.values("id"))
    print(f"N={n}: dataset of {len(ids)} samples in {t.seconds:.1f}s", flush=True)
    try:
        # ---- exact numpy reference (and the bare FiftyOne round trip for the same ids) ----------
        def exact(q: np.ndarray) -> list[str]:
            scores = data @ q
            top = np.argpartition(-scores, K)[:K]
            return ids[top[np.argsort(-scores[top])]].tolist()

        truth = [exact(q) for q in queries]
        raw_ms, _ = timed_loop(exact, queries, budget_s, min_queries)
        view_ms, _ = timed_loop(
            lambda q: dataset.select(exact(q), ordered=True).values("id"), queries, budget_s, min_queries
        )
        rows.append(
            {
                "N": n,
                "backend": "exact numpy (+ select for view)",
                "build s": 0.0,
                "first q ms": "",
                "queries": len(view_ms),
                **dict(zip(("view p50 ms", "view p99 ms"), percentiles(view_ms))),
                **dict(zip(("raw p50 ms", "raw p99 ms"), percentiles(raw_ms))),
                "recall@10": 1.0,
                "raw recall@10": 1.0,
            }
        )
        print(rows[-1], flush=True)

        for label, key, kwargs in BACKENDS:
            kwargs = {k: v.format(tmp=tmp) if isinstance(v, str) else v for k, v in kwargs.items()}
            row = {"N": n, "backend": label}
            results = None
            try:
                with Timer() as t:
                    results = fob.compute_similarity(dataset, embeddings=data, brain_key=key, **kwargs)
                row["build s"] = t.seconds
                row.update(measure(dataset, results, key, queries, truth, budget_s, min_queries, label))
                if key == "rs_milvus":
                    # the same index with the Lite file held open across queries (one server start)
                    rows.append(row)
                    print(row, flush=True)
                    row = {"N": n, "backend": "revsearch milvus (Lite, held open)", "build s": "(same)"}
                    with results._handle.hold():
                        row.update(measure(dataset, results, key, queries, truth, budget_s, min_queries, label))
            except Exception as exc:  # keep going: one broken backend must not lose the others
                traceback.print_exc()
                errors.append(f"N={n} {row['backend']}: {type(exc).__name__}: {exc}")
                row["error"] = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"[:110]
            finally:
                try:
                    if results is not None and results.config.method == "milvus":
                        results.cleanup()  # fiftyone-brain's milvus backend does not drop on delete_brain_run
                    if key in dataset.list_brain_runs():
                        dataset.delete_brain_run(key)
                except Exception as exc:
                    traceback.print_exc()
                    errors.append(f"N={n} {label} cleanup: {type(exc).__name__}: {exc}")
            rows.append(row)
            print(row, flush=True)
    finally:
        dataset.delete_brain_runs()
        dataset.delete()
    return rows


def release_lite_servers() -> None:
    """Stop any Milvus Lite server still running in this process (fiftyone-brain's ORM connection)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
        from pymilvus import connections

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ORM-API deprecation notices
            for alias, _ in connections.list_connections():
                connections.disconnect(alias)
        server_manager_instance.release_all()
    except Exception:
        traceback.print_exc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=30, help="query vectors per size")
    parser.add_argument(
        "--budget-s", type=float, default=45.0, help="stop a backend's timing loop after this many seconds ..."
    )
    parser.add_argument("--min-queries", type=int, default=10, help="... but time at least this many queries")
    args = parser.parse_args()

    rows: list[dict] = []
    errors: list[str] = []
    tmp = tempfile.mkdtemp(prefix="revsearch-brain-bench-")
    with Timer() as total:
        try:
            for n in args.sizes:
                rows += bench_size(n, args.dim, args.queries, args.budget_s, args.min_queries, tmp, errors)
        finally:
            release_lite_servers()
            shutil.rmtree(tmp, ignore_errors=True)
    columns = [
        "N",
        "backend",
        "build s",
        "first q ms",
        "queries",
        "view p50 ms",
        "view p99 ms",
        "raw p50 ms",
        "raw p99 ms",
        "recall@10",
        "raw recall@10",
    ]
    if any("error" in r for r in rows):
        columns.append("error")
    import pymilvus

    meta = {
        "dim": args.dim,
        "k": K,
        "queries": args.queries,
        "budget_s": args.budget_s,
        "min_queries": args.min_queries,
        "fiftyone": fo.__version__,
        "fiftyone_brain": importlib.metadata.version("fiftyone-brain"),
        "pymilvus": pymilvus.__version__,
        "cpus": os.cpu_count(),
        "total_s": total.seconds,
        "errors": errors,
    }
    write_results("brain_backends", rows, markdown_table(rows, columns), meta)
    for e in errors:
        print("ERROR:", e)


if __name__ == "__main__":
    main()
