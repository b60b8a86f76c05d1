"""Near-duplicate finding through FiftyOne's own API: revsearch indexes vs fob's sklearn backend.

    cd bench && ../.venv/bin/python near_duplicates.py [--sizes 10000 100000 1000000] [--timeout-s 1800]

For each size N, one FiftyOne dataset of N dummy samples gets synthetic clustered unit vectors
(``synthetic()`` from vector_search.py, 128-d) in which the last 1% are planted near-duplicates:
copies of distinct earlier vectors plus noise far below the distance between distinct vectors.
``--backends`` picks the backends; rows of earlier runs (same dimension) that a run does not redo
are kept in the table. Each backend then runs, in a child process of its own (so its peak memory is its own):

- ``fob.compute_similarity(dataset, embeddings=vectors, backend=...)`` (build time), then
- ``fob.compute_near_duplicates(dataset, similarity_index=..., threshold=...)`` (find time: range
  search of every sample, fob's greedy pass, then each duplicate's nearest kept sample).

Backends: revsearch ``kmeans`` (IVF, exact bisector-bounded range search), ``pixel`` (exact
numpy index, float64), ``milvus`` (Milvus Lite FLAT, range search), and fob's ``sklearn``
(euclidean; below 15,000 samples it holds the N x N distance matrix, above it uses sklearn's
NearestNeighbors radius search). The threshold is squared L2 ``THRESH`` for revsearch and its square
root (euclidean) for sklearn: the same pairs. Precision / recall are of ``duplicate_ids`` against the
planted copies. Memory: the child's peak RSS (``ru_maxrss``) and what the run added to the RSS it
had before building ("added MB": the index and the search), and the Milvus Lite server's peak RSS
(sampled every 0.2 s). A (backend, size) pair that is expected to exceed
``--timeout-s`` (from the quadratic scaling of the previous size) is skipped and says so; one that
runs past it is stopped and says so. The expected time extrapolates the backend's find time with the
exponent measured between the two previous sizes (quadratic after only one size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
from common import RESULTS, ROOT, markdown_table
from vector_search import synthetic

DIM, DUP_FRACTION, COPY_NOISE, THRESH = 128, 0.01, 1e-3, 0.02
BACKENDS = ("kmeans", "pixel", "milvus", "sklearn")
DOC = ROOT / "docs" / "benchmarks.md"


def planted(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors with the last DUP_FRACTION of rows near-copies of distinct earlier rows; copy rows."""
    vectors = synthetic(n, DIM)
    n_dup = int(n * DUP_FRACTION)
    rng = np.random.default_rng(1)
    originals = rng.choice(n - n_dup, n_dup, replace=False)
    copies = np.arange(n - n_dup, n)
    vectors[copies] = vectors[originals] + COPY_NOISE * rng.normal(size=(n_dup, DIM)).astype(np.float32)
    vectors[copies] /= np.linalg.norm(vectors[copies], axis=1, keepdims=True)
    return vectors, copies


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ServerPeak:
    """Peak RSS (MB) of this process's child processes (the Milvus Lite server), sampled."""

    def __init__(self, period_s: float = 0.2):
        self.mb, self._period, self._stop = 0.0, period_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self._period):
            rss = 0
            for proc in me.children(recursive=True):
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.mb = max(self.mb, rss / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.mb


def child(dataset_name: str, backend: str) -> dict:
    """Build one index and find near-duplicates with fob's API; timings, memory, precision, recall."""
    import fiftyone as fo
    import fiftyone.brain as fob

    import revsearch.fiftyone.brain  # noqa: F401  (registers backend="revsearch")

    ds = fo.load_dataset(dataset_name)
    ids = ds.values("id")
    vectors, copies = planted(len(ids))
    base = psutil.Process().memory_info().rss / 2**20
    server = ServerPeak()
    key = f"nd_{backend}"
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sklearn":
            options, thresh = {"backend": "sklearn", "metric": "euclidean"}, math.sqrt(THRESH)
        else:
            options, thresh = {"backend": "revsearch", "index_kind": backend}, THRESH
            if backend == "milvus":
                options["uri"] = os.path.join(tmp, "nd.db")
        start = time.perf_counter()
        index = fob.compute_similarity(ds, embeddings=vectors, brain_key=key, **options)
        built = time.perf_counter()
        fob.compute_near_duplicates(ds, similarity_index=index, threshold=thresh)
        found = time.perf_counter()
        predicted, truth = set(index.duplicate_ids), {ids[i] for i in copies}
        ds.delete_brain_run(key)
    hits, peak = len(predicted & truth), peak_rss_mb()
    return {
        "build s": built - start,
        "find s": found - built,
        "total s": found - start,
        "precision": hits / max(len(predicted), 1),
        "recall": hits / len(truth),
        "peak MB": round(peak),
        "added MB": round(peak - base),
        "server peak MB": round(server.stop()),
    }


def child_index_level(n: int, nprobe: int | None = None) -> dict:
    """The K-means IVF range-search self-join and fob's greedy rule, without FiftyOne (no dataset);
    exact, or scanning only the ``nprobe`` nearest lists of each vector (approximate)."""
    from revsearch.index.ivf import IVFIndex

    vectors, copies = planted(n)
    keys = [str(i) for i in range(n)]
    base = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    ivf = IVFIndex.fit(vectors)
    ivf.add(keys, vectors)
    built = time.perf_counter()
    neighbours = ivf.range_search(vectors, THRESH, nprobe=nprobe)
    dropped: set[int] = set()
    for i, hits in enumerate(neighbours):  # fob's _remove_duplicates_thresh: keep i, drop later neighbours
        if i not in dropped:
            dropped.update(int(h.key) for h in hits if int(h.key) > i)
    found = time.perf_counter()
    hits, peak = len(dropped & set(copies.tolist())), peak_rss_mb()
    return {
        "build s": built - start,
        "find s": found - built,
        "total s": found - start,
        "precision": hits / max(len(dropped), 1),
        "recall": hits / len(copies),
        "peak MB": round(peak),
        "added MB": round(peak - base),
    }


def run_child(name: str, backend: str, timeout_s: float, nprobe: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", name, backend]
    if backend == "kmeans-index":
        cmd = [sys.executable, __file__, "--child-index", name, str(nprobe)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"note": f"stopped after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {"note": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def expected_seconds(measured: list[tuple[int, float]], n: int) -> float:
    """Time extrapolated to ``n`` from earlier (size, seconds): measured exponent, else quadratic."""
    if not measured:
        return 0.0
    (n1, t1), (n2, t2) = ([measured[0]] + measured)[-2:]
    exponent = math.log(t2 / t1) / math.log(n2 / n1) if n2 != n1 else 2.0
    return t2 * (n / n2) ** max(exponent, 1.0)


def write_doc(rows: list[dict], command: str, name: str = "near_duplicates") -> None:
    """Table and ratios into docs/benchmarks.md (between markers), raw rows into bench/results."""
    columns = [
        "N",
        "backend",
        "build s",
        "find s",
        "total s",
        "precision",
        "recall",
        "peak MB",
        "added MB",
        "server peak MB",
        "sklearn/this time",
        "sklearn/this added MB",
        "note",
    ]
    saved = RESULTS / f"{name}.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    commands = [command]
    if previous.get("dim") == DIM:  # keep earlier runs' rows (same vectors) this run did not redo
        done = {(row["N"], row["backend"]) for row in rows}
        rows = [row for row in previous["rows"] if (row["N"], row["backend"]) not in done] + rows
        rows.sort(key=lambda row: (row["N"], row["backend"] == "sklearn"))
        commands = [c for c in previous["commands"] if c != command] + commands
    for row in rows:
        ref = next((r for r in rows if r["N"] == row["N"] and r["backend"] == "sklearn" and "total s" in r), None)
        if ref and "total s" in row and row["backend"] != "sklearn":
            row["sklearn/this time"] = round(ref["total s"] / row["total s"], 2)
            row["sklearn/this added MB"] = round(ref["added MB"] / max(row["added MB"], 1), 2)
    table = markdown_table(rows, columns)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"dim": DIM, "commands": commands, "rows": rows}, indent=1))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = DOC.read_text()
    head, rest = text.split(start, 1)
    runs = "; ".join(f"`{c}`" for c in commands)
    DOC.write_text(f"{head}{start}\nCommands ({DIM}-d vectors): {runs}\n\n{table}\n{end}{rest.split(end, 1)[1]}")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per (backend, size) run")
    parser.add_argument(
        "--index-level",
        action="store_true",
        help="only the K-means IVF index, without FiftyOne (table 2 of docs/benchmarks.md)",
    )
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--nprobe",
        type=int,
        nargs="+",
        default=[0, 8],
        help="with --index-level: lists scanned per vector (0 = exact, bisector-bounded)",
    )
    parser.add_argument("--child-index", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.child_index:
        n, nprobe = args.child_index
        print(json.dumps(child_index_level(n, nprobe or None)))
        return
    if args.index_level:
        rows, measured = [], {nprobe: [] for nprobe in args.nprobe}
        for n in args.sizes:
            for nprobe in args.nprobe:
                row = {"N": n, "backend": f"kmeans-index nprobe={nprobe}" if nprobe else "kmeans-index exact"}
                expected = expected_seconds(measured[nprobe], n)
                if expected > args.timeout_s:
                    row["note"] = f"skipped: ~{expected / 3600:.1f} h expected (scaling of the smaller sizes)"
                else:
                    row.update(run_child(str(n), "kmeans-index", args.timeout_s, nprobe))
                    if "total s" in row:
                        measured[nprobe].append((n, row["total s"]))
                rows.append(row)
                print(row, flush=True)
        write_doc(
            rows,
            "cd bench && ../.venv/bin/python near_duplicates.py " + " ".join(sys.argv[1:]),
            "near_duplicates_index",
        )
        return
    import fiftyone as fo

    rows, measured = [], {b: [] for b in args.backends}
    for n in args.sizes:
        ds = fo.Dataset()
        ds.add_samples(fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(n))
        for backend in args.backends:
            row = {"N": n, "backend": backend}
            expected = expected_seconds(measured[backend], n)
            if expected > args.timeout_s:
                row["note"] = f"skipped: ~{expected / 3600:.1f} h expected (scaling of the smaller sizes)"
            else:
                row.update(run_child(ds.name, backend, args.timeout_s))
                if "total s" in row:
                    measured[backend].append((n, row["total s"]))
            rows.append(row)
            print(row, flush=True)
        ds.delete()
    write_doc(rows, "cd bench && ../.venv/bin/python near_duplicates.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
