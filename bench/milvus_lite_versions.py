#!/usr/bin/env python
"""Milvus Lite benchmark for revsearch (MilvusClient API only).

Flow per run (fresh .db file each time):
  create_collection(explicit schema, no index)  ->  insert N vectors in batches
  -> [optional client.flush()]  ->  create_index + load_collection
  -> 20 single top-10 searches (p50/p99)  ->  one search call with 100 queries
  -> recall@10 vs exact numpy L2.

Compares milvus-lite releases, each installed in its own virtual environment:
  python3 -m venv /tmp/lite25 && /tmp/lite25/bin/pip install pymilvus==2.6.17 milvus-lite==2.5.1 numpy
  python3 -m venv /tmp/lite3 && /tmp/lite3/bin/pip install pymilvus==3.0.2 milvus-lite==3.2.2 numpy
  /tmp/lite25/bin/python bench/milvus_lite_versions.py --index FLAT
  /tmp/lite3/bin/python bench/milvus_lite_versions.py --index IVF_FLAT --flush
Prints one JSON line (prefixed "RESULT ") with all measurements; figures in docs/benchmarks.md.
"""

import argparse
import importlib.metadata as md
import json
import os
import shutil
import time

import numpy as np
from pymilvus import DataType, MilvusClient

INDEXES = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 16}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 64}),
    "AUTOINDEX": ({}, {}),
}


def exact_topk(data, queries, k):
    # squared L2 via ||x||^2 - 2 x.q (+ ||q||^2, constant per query)
    d2 = (data * data).sum(1)[None, :] - 2.0 * queries @ data.T
    idx = np.argpartition(d2, k, axis=1)[:, :k]
    rows = np.arange(len(queries))[:, None]
    order = np.argsort(d2[rows, idx], axis=1)
    return idx[rows, order]


def recall_at_k(found_ids, truth_ids, k):
    hits = 0
    for f, t in zip(found_ids, truth_ids):
        hits += len(set(f[:k]) & set(int(x) for x in t[:k]))
    return hits / (k * len(truth_ids))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default="HNSW", choices=list(INDEXES))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--n-single", type=int, default=20)
    ap.add_argument("--n-batch", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--flush", action="store_true", help="client.flush() after inserts")
    ap.add_argument(
        "--consistency",
        default=None,
        help="consistency_level for create_collection and search (Strong/Bounded/Session/Eventually)",
    )
    ap.add_argument("--db", default=None, help=".db path (default /tmp/milvusbench/runs/<tag>/bench.db, wiped first)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--mem-limit-gb",
        type=float,
        default=10.0,
        help="RLIMIT_AS guard: milvus-lite 3.x memtable brute force allocates nq*n*dim*4 bytes",
    )
    ap.add_argument(
        "--data",
        default="gaussian",
        choices=["gaussian", "clustered"],
        help="gaussian: i.i.d. N(0,1) (spec; worst case for ANN recall); "
        "clustered: 1000 gaussian clusters, queries = perturbed data points",
    )
    args = ap.parse_args()

    import resource

    lim = int(args.mem_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    versions = {p: md.version(p) for p in ("pymilvus", "milvus-lite")}
    flush = "flush" if args.flush else "noflush"
    tag = f"{versions['milvus-lite']}_{args.index}_{args.data}_{flush}_{args.consistency or 'default'}_{args.n}"
    # NB: milvus-lite 2.5.x requires the .db *file name* to be < 36 chars
    db = args.db or f"/tmp/milvusbench/runs/{tag}/bench.db"
    os.makedirs(os.path.dirname(db), exist_ok=True)
    # fresh file per run (milvus-lite 2.x: file + .lock; 3.x: a directory)
    for p in (db, db + ".lock", os.path.join(os.path.dirname(db), "." + os.path.basename(db) + ".lock")):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)

    rng = np.random.default_rng(args.seed)
    qrng = np.random.default_rng(args.seed + 1)
    nq = args.n_single + args.n_batch
    if args.data == "gaussian":
        data = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        queries = qrng.standard_normal((nq, args.dim), dtype=np.float32)
    else:
        centers = rng.standard_normal((1000, args.dim), dtype=np.float32)
        data = centers[rng.integers(0, 1000, args.n)] + 0.3 * rng.standard_normal((args.n, args.dim), dtype=np.float32)
        queries = data[qrng.integers(0, args.n, nq)] + 0.1 * qrng.standard_normal((nq, args.dim), dtype=np.float32)

    res = {
        "versions": versions,
        "index": args.index,
        "data": args.data,
        "n": args.n,
        "dim": args.dim,
        "flush": args.flush,
        "consistency": args.consistency,
    }
    t = time.perf_counter()
    client = MilvusClient(uri=db)
    res["connect_s"] = time.perf_counter() - t

    name = "images"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("key", DataType.VARCHAR, max_length=1024)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=args.dim)
    ckw = {"consistency_level": args.consistency} if args.consistency else {}
    client.create_collection(collection_name=name, schema=schema, **ckw)

    # ---- insert ----
    t = time.perf_counter()
    for s in range(0, args.n, args.batch):
        e = min(s + args.batch, args.n)
        rows = [{"id": i, "key": f"img/{i:07d}.jpg", "vector": data[i]} for i in range(s, e)]
        client.insert(collection_name=name, data=rows)
    res["insert_s"] = time.perf_counter() - t
    if args.flush:
        t = time.perf_counter()
        client.flush(collection_name=name)
        res["flush_s"] = time.perf_counter() - t

    # ---- index + load ----
    build, search_p = INDEXES[args.index]
    ip = client.prepare_index_params()
    ip.add_index(field_name="vector", index_type=args.index, metric_type="L2", params=build)
    t = time.perf_counter()
    try:
        client.create_index(collection_name=name, index_params=ip)
    except Exception as ex:  # e.g. milvus-lite 2.5.x rejects HNSW
        res["error"] = f"create_index: {type(ex).__name__}: {ex}"
        client.close()
        print("RESULT " + json.dumps(res), flush=True)
        return
    res["create_index_s"] = time.perf_counter() - t
    t = time.perf_counter()
    client.load_collection(collection_name=name)
    res["load_s"] = time.perf_counter() - t
    res["index_load_s"] = res["create_index_s"] + res["load_s"]
    res["row_count"] = client.get_collection_stats(name).get("row_count")

    sp = {"metric_type": "L2", "params": search_p}
    skw = {"consistency_level": args.consistency} if args.consistency else {}

    def search(qs):
        return client.search(
            collection_name=name,
            data=[q.tolist() for q in qs],
            limit=args.k,
            anns_field="vector",
            search_params=sp,
            output_fields=["key"],
            **skw,
        )

    # warm-up query (not counted; may trigger lazy work)
    t = time.perf_counter()
    search(queries[:1])
    res["first_query_s"] = time.perf_counter() - t

    # ---- single queries ----
    lat = []
    found = []
    for q in queries[: args.n_single]:
        t = time.perf_counter()
        r = search([q])
        lat.append(time.perf_counter() - t)
        found.append([h["id"] for h in r[0]])
    lat_ms = np.array(lat) * 1000
    res["single_p50_ms"] = float(np.percentile(lat_ms, 50))
    res["single_p99_ms"] = float(np.percentile(lat_ms, 99))
    print("PARTIAL " + json.dumps(res), flush=True)

    # ---- one batched call ----
    bq = queries[args.n_single :]
    t = time.perf_counter()
    try:
        r = search(bq)
        dt = time.perf_counter() - t
        res["batch_total_s"] = dt
        res["batch_per_query_ms"] = dt * 1000 / len(bq)
        found += [[h["id"] for h in hits] for hits in r]
        # sanity: output field round-trips
        res["sample_hit"] = {
            "id": r[0][0]["id"],
            "key": r[0][0]["entity"].get("key"),
            "distance": float(r[0][0]["distance"]),
        }
    except Exception as ex:
        res["batch_error"] = f"{type(ex).__name__}: {str(ex)[:300]} (after {time.perf_counter() - t:.1f}s)"

    truth = exact_topk(data, queries[: len(found)], args.k)
    res["recall_at_10"] = recall_at_k(found, truth, args.k)
    res["recall_n_queries"] = len(found)
    res["recall_single"] = recall_at_k(found[: args.n_single], truth[: args.n_single], args.k)

    t = time.perf_counter()
    client.close()
    res["close_s"] = time.perf_counter() - t
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
