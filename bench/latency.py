"""Interactive latency: cold CLI queries, plugin load, and the first / next / after-idle App search.

    cd bench && ../.venv/bin/python latency.py [--baseline DIR] [--cli-sizes 22 10000 100000]
                                              [--brain-sizes 10000 100000] [--idle-s 30]

``--baseline DIR``: a checkout of the code before the change (``git worktree add DIR <commit>``);
every measurement then runs for it and for this tree, side by side, in fresh processes.

- import: ``python -X importtime -c "import revsearch.cli.main"`` (total, and which heavy modules load);
- plugin load: a fresh process that has imported ``fiftyone.operators`` and ``fiftyone.brain`` (as
  the App has) loads the plugin the way FiftyOne does (``PluginContext.register_all``);
- CLI query: ``revsearch query IMAGE`` in a fresh process (wall time and peak RSS from
  ``/usr/bin/time``) on an index of N images (``--cli-kinds``: Milvus Lite, K-means IVF, exact):
  22 real Caltech images embedded with MobileNetV2, plus N-22 synthetic unit vectors (PCA-128
  space, as ``--pca-dim auto`` gives from 1,000 images up) with their manifest entries, so loading
  and searching cost what N files would;
- App search: a fresh process loads a dataset of N samples whose brain runs were built from
  synthetic vectors (``index_kind="kmeans"`` and ``"milvus"``, Lite file), then times
  ``sort_by_similarity(vector, k=10)``: first, next (median of 5), after ``--idle-s`` seconds idle,
  and (IVF) after ``dataset.clear_cache()`` (FiftyOne drops its results cache, e.g. after its
  15-minute dataset TTL in the App), plus the process's peak RSS.
Each timing is the median of ``--repeats`` fresh processes (CLI, import, plugin).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
from common import CALTECH, ROOT, markdown_table, seed_torch_cache, write_results
from vector_search import synthetic

HEAVY = ("torch", "torchvision", "sklearn", "pymilvus", "onnxruntime", "cv2", "fiftyone")
PLUGIN_PROBE = rf"""
import json, sys, time
import fiftyone.operators, fiftyone.brain  # noqa: E401  (loaded in the App before any plugin)
import fiftyone.plugins.core as fopc
from fiftyone.plugins.context import PluginContext
before = set(sys.modules)
t = time.perf_counter()
ctx = PluginContext(fopc.get_plugin(plugin_dir=sys.argv[1]))
ctx.register_all()
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "errors": len(ctx.errors), "operators": len(ctx.instances),
                  "loaded": [m for m in {HEAVY!r} if m in sys.modules and m not in before]}}))
"""
BRAIN_PROBE = r"""
import json, resource, sys, time
import numpy as np
import fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
query = np.load(sys.argv[2])
idle = float(sys.argv[3])
keys = sys.argv[4:]
def timed():
    out = {}
    for key in keys:
        t = time.perf_counter()
        ds.sort_by_similarity(query, k=10, brain_key=key).values("id")
        out[key] = (time.perf_counter() - t) * 1000
    return out
first = timed()
nxt = [timed() for _ in range(5)]
time.sleep(idle)
after_idle = timed()
ds.clear_cache()
after_clear = timed()
print(json.dumps({"first": first, "next": {k: float(np.median([n[k] for n in nxt])) for k in keys},
                  "after_idle": after_idle, "after_clear_cache": after_clear,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code_dir: Path, args: list[str], cache: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    cache = cache or os.environ["REVSEARCH_CACHE"]
    env = {**os.environ, "PYTHONPATH": str(code_dir), "REVSEARCH_CACHE": str(cache)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800, **kwargs)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def import_time(code_dir: Path) -> dict:
    """What ``import revsearch.cli.main`` imports: every top-level import after the interpreter's start-up
    (``site``), so the ``revsearch`` package and what it imports count too."""
    done = run(code_dir, [sys.executable, "-X", "importtime", "-c", "import revsearch.cli.main"])
    lines = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")][1:]
    top = [cells for cells in lines if len(cells[2]) - len(cells[2].lstrip()) == 1]  # not nested
    after_site = top[[cells[2].strip() for cells in top].index("site") + 1 :]
    total = sum(int(cells[1]) for cells in after_site) / 1e6
    names = {cells[2].strip() for cells in lines}
    return {"seconds": total, "loaded": [m for m in HEAVY if m in names]}


def plugin_load(code_dir: Path) -> dict:
    done = run(code_dir, [sys.executable, "-c", PLUGIN_PROBE, str(code_dir)])
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return last_json(done.stdout)


def cli_query(code_dir: Path, index_dir: Path, image: str, before=None) -> dict:
    if before:
        before()
    done = run(
        code_dir,
        [
            "/usr/bin/time",
            "-f",
            "TIME %e %M",
            sys.executable,
            "-m",
            "revsearch",
            "query",
            image,
            "--index-dir",
            str(index_dir),
            "-k",
            "10",
        ],
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    wall, rss_kb = re.findall(r"TIME ([\d.]+) (\d+)", done.stderr)[-1]
    return {"seconds": float(wall), "rss_mb": int(rss_kb) / 1024}


def stop_serving(db: Path) -> None:
    """Stop the process serving the Lite file ``db`` (revsearch.lite_server), if one does."""
    from revsearch.lite_server import serve_path

    try:
        pid = json.loads(serve_path(db).read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    while serve_path(db).exists() or psutil.pid_exists(pid):
        time.sleep(0.05)


def serving_rss_mb(db: Path) -> float | None:
    """Resident memory of the process serving ``db`` and its Milvus Lite server, or None."""
    from revsearch.lite_server import serve_path

    try:
        process = psutil.Process(json.loads(serve_path(db).read_text())["pid"])
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    except (OSError, ValueError, psutil.Error):
        return None


def median_of(repeats: int, measure, *args) -> dict:
    runs = [measure(*args) for _ in range(repeats)]
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
    return {**runs[0], **out, "runs": len(runs)}


def caltech_images(n: int) -> list[str]:
    folder = CALTECH / "101_ObjectCategories"
    return [str(p) for c in ("airplanes", "butterfly") for p in sorted((folder / c).glob("*.jpg"))[: n // 2]]


def build_cli_index(index_dir: Path, n: int, images: list[str], kind: str) -> None:
    """An index of ``kind`` (Milvus Lite, K-means IVF or exact) of ``images`` plus ``n - len(images)``
    synthetic vectors (PCA-128 space)."""
    from revsearch import Embedder, EmbedderConfig, PCAReducer, SearchIndex
    from revsearch.index.registry import create_index

    extractor = Embedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1"))
    real = extractor.embed_paths(images, progress=False).vectors
    reducer = None
    if n > len(images):  # what --pca-dim auto does from 1,000 images: PCA-128
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(extractor.dim, 128)))
        reducer = PCAReducer(real.mean(axis=0), q.T, np.ones(128), False)
        real = reducer.transform(real)
    fake = synthetic(n - len(images), real.shape[1]) if n > len(images) else np.empty((0, real.shape[1]))
    keys = images + [f"/synthetic/{i}.jpg" for i in range(len(fake))]
    vectors = np.concatenate([real, fake]).astype(np.float32)
    index_dir.mkdir(parents=True)
    milvus = {"collection": f"revsearch_bench_{n}", "uri": str(index_dir / "revsearch.db"), "overwrite": True}
    backend = create_index(kind, vectors, **(milvus if kind == "milvus" else {}))
    backend.add(keys, vectors)
    items = {k: {"path": k, "signature": [1, 1.0]} for k in keys}
    index = SearchIndex(index_dir, extractor, backend, reducer, items, {}, 0, [str(Path(images[0]).parent)])
    index.save()
    backend.close()


BUILD_PROBE = r"""
import sys, uuid
import numpy as np
import fiftyone as fo
import fiftyone.brain as fob
import revsearch.fiftyone.brain  # noqa: F401  (registers backend="revsearch")
sys.path.insert(0, sys.argv[3])
from vector_search import synthetic
n, tmp = int(sys.argv[1]), sys.argv[2]
dataset = fo.Dataset(f"bench-latency-{n}-{uuid.uuid4().hex[:8]}", persistent=True)  # outlives this process
dataset.add_samples([fo.Sample(filepath=f"/synthetic/{i}.jpg") for i in range(n)], progress=False)
data = synthetic(n, 128)
fob.compute_similarity(dataset, embeddings=data, brain_key="ivf", backend="revsearch", index_kind="kmeans")
fob.compute_similarity(dataset, embeddings=data, brain_key="lite", backend="revsearch", index_kind="milvus",
                       uri=f"{tmp}/b{uuid.uuid4().hex[:8]}.db")
dataset.load_brain_results("lite")._store.release()  # let the probe processes open the Lite file
np.save(f"{tmp}/query{n}.npy", synthetic(1, 128, seed=1)[0] * 0.3 + data[0] * 0.7)
print(dataset.name)
"""


def build_brain_dataset(code: Path, n: int, tmp: Path) -> tuple[str, Path]:
    """A dataset of ``n`` samples with both brain runs, saved by the code in ``code`` (each version
    reads runs in its own format)."""
    done = run(code, [sys.executable, "-c", BUILD_PROBE, str(n), str(tmp), str(Path(__file__).parent)])
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1], tmp / f"query{n}.npy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="checkout of the code before the change")
    parser.add_argument("--cli-sizes", type=int, nargs="+", default=[22, 10_000, 100_000])
    parser.add_argument("--cli-kinds", nargs="+", default=["milvus", "kmeans", "exact"])
    parser.add_argument("--brain-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seed_torch_cache()
    tmp = Path(tempfile.mkdtemp(prefix="revsearch-latency-"))
    os.environ.setdefault("REVSEARCH_CACHE", str(tmp / "cache"))
    versions = {"this tree": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rows: list[dict] = []
    try:
        for name, code in versions.items():
            imp = median_of(args.repeats, import_time, code)
            rows.append(
                {
                    "measure": "import revsearch.cli.main",
                    "code": name,
                    "ms": imp["seconds"] * 1000,
                    "heavy modules loaded": " ".join(imp["loaded"]),
                }
            )
            plug = median_of(args.repeats, plugin_load, code)
            rows.append(
                {
                    "measure": "plugin load (register)",
                    "code": name,
                    "ms": plug["seconds"] * 1000,
                    "heavy modules loaded": " ".join(plug["loaded"]),
                }
            )
        images = caltech_images(22)
        for kind in args.cli_kinds:
            for n in args.cli_sizes:
                index_dir = tmp / f"cli-{kind}-{n}"
                build_cli_index(index_dir, n, images, kind)
                for name, code in versions.items():
                    lite = index_dir / "revsearch.db"
                    cases = {"": None}
                    if kind == "milvus":  # a query that starts the serving process, and one that finds it
                        cases = {", nothing serving the file": partial(stop_serving, lite), ", file served": None}
                    for label, before in cases.items():
                        q = median_of(args.repeats, cli_query, code, index_dir, images[0], before)
                        served = serving_rss_mb(lite)
                        rows.append(
                            {
                                "measure": f"revsearch query (cold process), {kind}{label}",
                                "N": n,
                                "code": name,
                                "ms": q["seconds"] * 1000,
                                "rss MB": q["rss_mb"],
                                "serving process rss MB": served,
                            }
                        )
                    stop_serving(lite)
                shutil.rmtree(index_dir)
        for n in args.brain_sizes:
            for name, code in versions.items():
                dataset, query = build_brain_dataset(code, n, tmp)
                try:
                    probe = [sys.executable, "-c", BRAIN_PROBE, dataset, str(query)]
                    done = run(code, [*probe, str(args.idle_s), "ivf", "lite"])
                    # a machine that never loaded the runs: no local copy of their arrays (run_arrays)
                    empty = run(code, [*probe, "0", "ivf"], cache=tmp / f"empty-cache-{name}-{n}".replace(" ", "-"))
                    for probed in (done, empty):
                        if probed.returncode:
                            raise RuntimeError(probed.stderr[-2000:])
                    r, cold = last_json(done.stdout), last_json(empty.stdout)
                    for key, label in (("ivf", "kmeans (IVF)"), ("lite", "milvus (Lite)")):
                        rows.append(
                            {
                                "measure": f"sort_by_similarity, {label}",
                                "N": n,
                                "code": name,
                                "first ms": r["first"][key],
                                "first, empty array cache ms": cold["first"].get(key),
                                "next ms": r["next"][key],
                                f"after {args.idle_s:g} s idle ms": r["after_idle"][key],
                                "after clear_cache ms": r["after_clear_cache"][key],
                                "rss MB": r["rss_mb"],
                            }
                        )
                finally:
                    import fiftyone as fo

                    built = fo.load_dataset(dataset)
                    built.delete_brain_runs()  # their stored arrays and Lite collection go too
                    built.delete()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    columns = [
        "measure",
        "N",
        "code",
        "ms",
        "first ms",
        "first, empty array cache ms",
        "next ms",
        f"after {args.idle_s:g} s idle ms",
        "after clear_cache ms",
        "rss MB",
        "serving process rss MB",
        "heavy modules loaded",
    ]
    meta = {
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "idle_s": args.idle_s,
        "repeats": args.repeats,
        "baseline": str(args.baseline) if args.baseline else None,
    }
    write_results("latency", rows, markdown_table(rows, columns), meta)


if __name__ == "__main__":
    main()
