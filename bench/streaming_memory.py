"""Streaming indexing keeps memory flat: a large synthetic set into Milvus, one batch at a time.

Vectors are generated batch by batch (batch ``b`` from seed ``(seed, b)``, so any batch can be
regenerated) and upserted with ``MilvusIndex.add``; after every batch the RSS of this process and
of the milvus-lite server child process is sampled. Nothing but the current batch is held here.

    .venv/bin/python bench/streaming_memory.py                       # 1M x 128 into Milvus Lite (~2 min here)
    .venv/bin/python bench/streaming_memory.py --n 200000 --batch 5000   # smaller, quicker
    .venv/bin/python bench/streaming_memory.py --uri http://localhost:19530   # a Milvus server

Writes bench/results/streaming_memory.json and bench/results/streaming_memory.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS  # noqa: E402
from revsearch import MilvusIndex  # noqa: E402

MB = 2**20


def make_batch(seed: int, b: int, size: int, dim: int) -> tuple[list[str], np.ndarray]:
    """Batch ``b``: its keys and vectors, reproducible on its own (no state carried between batches)."""
    start = b * size
    vectors = np.random.default_rng([seed, b]).normal(size=(size, dim)).astype(np.float32)
    return [f"img/{i:09d}.jpg" for i in range(start, start + size)], vectors


def milvus_children() -> list[psutil.Process]:
    """The milvus-lite server processes started by this process (none for a remote server)."""
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "milvus"]


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / MB


def run(n: int, dim: int, batch: int, uri: str, seed: int) -> dict:
    index = MilvusIndex(dim, collection="streaming_bench", uri=uri, overwrite=True)
    me, server = psutil.Process(), milvus_children()
    samples = [
        {"batch": 0, "vectors": 0, "seconds": 0.0, "client_rss_mb": rss_mb([me]), "server_rss_mb": rss_mb(server)}
    ]
    n_batches = -(-n // batch)
    start = time.perf_counter()
    with tqdm(total=n_batches * batch, unit="vec", unit_scale=True, desc="indexing") as bar:
        for b in range(n_batches):
            keys, vectors = make_batch(seed, b, batch, dim)
            index.add(keys, vectors)
            bar.update(len(keys))
            samples.append(
                {
                    "batch": b + 1,
                    "vectors": (b + 1) * batch,
                    "seconds": time.perf_counter() - start,
                    "client_rss_mb": rss_mb([me]),
                    "server_rss_mb": rss_mb(server),
                }
            )
            bar.set_postfix(
                client_mb=f"{samples[-1]['client_rss_mb']:.0f}", server_mb=f"{samples[-1]['server_rss_mb']:.0f}"
            )
    total = samples[-1]["vectors"]
    assert len(index) == total, f"collection holds {len(index)} vectors, {total} were inserted"
    probe_keys, probe = make_batch(seed, n_batches // 2, batch, dim)
    hits = index.search(probe[:20], 1)
    top1 = float(np.mean([h[0].key == k for h, k in zip(hits, probe_keys[:20])]))
    index.close()
    return {
        "n": total,
        "dim": dim,
        "batch": batch,
        "uri": uri,
        "index_type": index.index_type,
        "seconds": samples[-1]["seconds"],
        "vectors_per_s": total / samples[-1]["seconds"],
        "all_vectors_mb": total * dim * 4 / MB,
        "self_match_top1": top1,
        "samples": samples,
        "summary": summarize(samples),
    }


def summarize(samples: list[dict]) -> dict:
    """Peak RSS over the first and the last quarter of the batches: flat memory means equal peaks."""
    quarter = max(1, (len(samples) - 1) // 4)
    first, last = samples[1 : 1 + quarter], samples[-quarter:]
    return {
        key: {
            "start": samples[0][key],
            "peak_first_quarter": max(s[key] for s in first),
            "peak_last_quarter": max(s[key] for s in last),
            "peak": max(s[key] for s in samples),
        }
        for key in ("client_rss_mb", "server_rss_mb")
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    x = [s["vectors"] / 1e3 for s in samples]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [s["client_rss_mb"] for s in samples], label="revsearch process RSS")
    if any(s["server_rss_mb"] for s in samples):
        ax.plot(x, [s["server_rss_mb"] for s in samples], label="milvus-lite server RSS")
    ax.plot(
        x,
        [s["vectors"] * result["dim"] * 4 / MB for s in samples],
        "--",
        color="grey",
        label="all vectors so far, if held in RAM",
    )
    ax.set_xlabel("vectors indexed (thousands)")
    ax.set_ylabel("MiB")
    ax.set_title(f"Streaming {result['n']:,} x {result['dim']} into Milvus, {result['batch']:,} per batch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors to index (rounded up to whole batches)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=10_000, help="vectors generated and inserted per batch")
    parser.add_argument("--uri", default="", help="Milvus URI; default: a Milvus Lite file in a temp dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.n, args.dim, args.batch, args.uri or str(Path(tmp) / "stream.db"), args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "streaming_memory.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "streaming_memory.png")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
