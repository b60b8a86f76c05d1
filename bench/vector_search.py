"""Vector search speed and IVF recall at 10k / 100k / 1M vectors (synthetic, clustered, unit-norm).

    .venv/bin/python bench/vector_search.py [--sizes 10000 100000 1000000] [--dim 128]

For each size, in one run: exact numpy search, our K-means IVF at several nprobe (recall@10 against
exact, fraction of vectors scanned), and Milvus Lite (FLAT and IVF_FLAT). Build time and peak
memory (Python heap via tracemalloc; for Milvus Lite, the RSS of its server process) are reported.
Writes the tables and bench/results/ivf_recall.png (recall vs fraction scanned).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc

import numpy as np
import psutil
from common import RESULTS, Timer, markdown_table, write_results

from revsearch import ExactIndex, IVFIndex, MilvusIndex
from revsearch.index.ivf import default_n_clusters, default_nprobe

K = 10


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around n/100 random centres (embedding-like structure, not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(10, n // 100), dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start : start + m] = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def latencies(search, queries: np.ndarray) -> dict:
    """p50 / p99 of single-query latency (ms) and batched throughput (queries/s)."""
    single = []
    for q in queries[:50]:
        with Timer() as t:
            search(q[None, :])
        single.append(1000 * t.seconds)
    with Timer() as t:
        search(queries)
    return {
        "p50 ms": float(np.percentile(single, 50)),
        "p99 ms": float(np.percentile(single, 99)),
        "batch q/s": len(queries) / t.seconds,
    }


def traced_build(build):
    """Run ``build()``; return (result, seconds, peak Python-heap MB during it)."""
    gc.collect()
    tracemalloc.start()
    with Timer() as t:
        result = build()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, t.seconds, peak


def recall(results, truth: list[set]) -> float:
    return float(np.mean([len(t & {h.key for h in r}) / K for r, t in zip(results, truth)]))


def milvus_server_rss_mb() -> float:
    procs = [p for p in psutil.Process().children(recursive=True) if "milvus" in " ".join(p.cmdline()).lower()]
    return sum(p.memory_info().rss for p in procs) / 2**20


def bench_size(n: int, dim: int, n_queries: int, milvus: bool) -> tuple[list[dict], list[dict]]:
    data = synthetic(n, dim)
    queries = synthetic(n_queries, dim, seed=1) * 0.3 + data[:n_queries] * 0.7
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    keys = [str(i) for i in range(n)]
    rows, curve = [], []

    def build_exact():
        index = ExactIndex(dim)
        index.add(keys, data)
        return index

    exact, secs, peak = traced_build(build_exact)
    truth = [{h.key for h in r} for r in exact.search(queries, K)]
    rows.append(
        {
            "N": n,
            "backend": "exact numpy",
            "build s": secs,
            "peak MB": peak,
            "recall@10": 1.0,
            "scanned": 1.0,
            **latencies(lambda q: exact.search(q, K), queries),
        }
    )

    n_clusters = default_n_clusters(n)

    def build_ivf():
        index = IVFIndex.fit(data, n_clusters)
        index.add(keys, data)
        return index

    ivf, secs, peak = traced_build(build_ivf)
    for nprobe in sorted(
        {
            1,
            2,
            4,
            8,
            max(1, n_clusters // 64),
            max(1, n_clusters // 32),
            default_nprobe(n_clusters),
            max(1, n_clusters // 16),
            max(1, n_clusters // 8),
            max(1, n_clusters // 4),
        }
    ):
        results, scanned = ivf.search_with_stats(queries, K, nprobe)
        r = recall(results, truth)
        curve.append({"N": n, "nprobe": nprobe, "scanned": scanned, "recall@10": r})
        default = " (default)" if nprobe == default_nprobe(n_clusters) else ""
        rows.append(
            {
                "N": n,
                "backend": f"kmeans IVF {n_clusters} lists, nprobe={nprobe}{default}",
                "build s": secs,
                "peak MB": peak,
                "recall@10": r,
                "scanned": scanned,
                **latencies(lambda q, p=nprobe: ivf.search(q, K, nprobe=p), queries),
            }
        )

    if milvus:
        for index_type, params in (("FLAT", None), ("IVF_FLAT", {"nlist": n_clusters})):
            with tempfile.TemporaryDirectory() as tmp:

                def build_milvus(index_type=index_type, params=params):
                    index = MilvusIndex(
                        dim,
                        "bench",
                        uri=f"{tmp}/b.db",
                        index_type=index_type,
                        index_params=params,
                        search_params={"nprobe": max(1, n_clusters // 8)} if params else None,
                    )
                    index.add(keys, data)
                    index.search(queries[:1], K)  # first search waits for the index to be ready
                    return index

                index, secs, _ = traced_build(build_milvus)
                results = index.search(queries, K)
                rows.append(
                    {
                        "N": n,
                        "backend": f"Milvus Lite {index_type}",
                        "build s": secs,
                        "peak MB": milvus_server_rss_mb(),
                        "recall@10": recall(results, truth),
                        "scanned": "",
                        **latencies(lambda q, index=index: index.search(q, K), queries),
                    }
                )
                index.drop()
                index.close()
    for row in rows:
        print(row, flush=True)
    return rows, curve


def plot_curve(curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({c["N"] for c in curve}):
        pts = sorted((c["scanned"], c["recall@10"]) for c in curve if c["N"] == n)
        ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"N={n:,}")
    ax.axhline(0.95, color="grey", linestyle=":")
    ax.axvline(10, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("% of vectors scanned per query")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title("K-means IVF: recall against work")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "ivf_recall.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--milvus-max", type=int, default=1_000_000, help="skip Milvus above this size")
    args = parser.parse_args()
    rows, curve = [], []
    for n in args.sizes:
        r, c = bench_size(n, args.dim, args.queries, n <= args.milvus_max)
        rows += r
        curve += c
    columns = ["N", "backend", "build s", "peak MB", "recall@10", "scanned", "p50 ms", "p99 ms", "batch q/s"]
    write_results("vector_search", rows, markdown_table(rows, columns), {"dim": args.dim, "queries": args.queries})
    plot_curve(curve)


if __name__ == "__main__":
    main()
