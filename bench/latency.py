"""Interactive latency: cold CLI queries, plugin load, and the first / next / after-idle App search.

    cd bench && ../.venv/bin/python latency.py [--baseline DIR] [--cli-sizes 22 10000 100000]
                                              [--brain-sizes 10000 100000] [--idle-s 30] [--name latency]

``--baseline DIR``: a checkout of the code before the change (``git worktree add DIR <commit>``);
every measurement then runs for it and for this tree in fresh processes, alternating between the
two (each repeat runs every version once), with ``PYTHONPATH`` and the working directory set to the
tree (checked: ``import revsearch`` must load that tree, not the editable install).

- import: ``python -X importtime -c "import revsearch.cli.main"`` (``revsearch.cli`` in trees from
  before the subpackages; total, and which heavy modules load);
- plugin load: a fresh process that has imported ``fiftyone.operators`` and ``fiftyone.brain`` (as
  the App has) loads the plugin the way FiftyOne does (``PluginContext.register_all``);
- CLI query: ``python -m revsearch query IMAGE`` in a fresh process: wall time, and peak RSS summed
  over the command's processes (each one's ``VmHWM``, sampled every 50 ms: the command and the Lite
  server it starts) on an index of N images (``--cli-kinds``: Milvus Lite, K-means IVF, exact):
  22 real Caltech images embedded with MobileNetV2, plus N-22 synthetic unit vectors (PCA-128
  space, as ``--pca-dim auto`` gives from 1,000 images up) with their manifest entries, so loading
  and searching cost what N files would. A tree that still has the CLI's shared-mode Lite serving
  process (``revsearch/lite_server.py``, before it was retired) runs Lite queries three ways: its
  CLI default (shared) with nothing serving the file, with the file served by the previous query's
  serving process (whose RSS is reported apart), and ``REVSEARCH_LITE_SERVER=own``;
- App search: a fresh process loads a dataset of N samples whose brain runs were built from
  synthetic vectors (``index_kind="kmeans"`` and ``"milvus"``, Lite file), then times
  ``sort_by_similarity(vector, k=10)``: first, next (median of 5), after ``--idle-s`` seconds idle,
  and (IVF) after ``dataset.clear_cache()`` (FiftyOne drops its results cache, e.g. after its
  15-minute dataset TTL in the App), plus the process's peak RSS.
Each timing is the median of ``--repeats`` fresh processes (CLI, import, plugin).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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


def run(code_dir: Path, args: list[str], cache: Path | None = None, env: dict | None = None, **kwargs):
    """``args`` with the code in ``code_dir``: first on ``sys.path`` (before the editable install's finder)
    and the working directory (``python -c`` / ``-m`` put it first)."""
    kwargs.setdefault("timeout", 1800)
    return subprocess.run(
        args, capture_output=True, text=True, env=tree_env(code_dir, cache, env), cwd=code_dir, **kwargs
    )


def tree_env(code_dir: Path, cache: Path | None = None, env: dict | None = None) -> dict:
    cache = cache or os.environ["REVSEARCH_CACHE"]
    return {**os.environ, "PYTHONPATH": str(code_dir), "REVSEARCH_CACHE": str(cache), **(env or {})}


def check_tree(code_dir: Path) -> None:
    done = run(code_dir, [sys.executable, "-c", "import revsearch; print(revsearch.__file__)"], timeout=60)
    loaded = Path(done.stdout.strip()).resolve()
    if loaded != code_dir / "revsearch" / "__init__.py":
        raise SystemExit(f"import revsearch loads {loaded} instead of the tree {code_dir}")


def commit(code_dir: Path) -> str:
    """The tree's commit, ``+changes`` when its working tree differs from it."""
    git = ["git", "-C", str(code_dir)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if changed else "")


def cli_module(code_dir: Path) -> str:
    """The command line's module: ``revsearch.cli.main`` since the subpackages, ``revsearch.cli`` before."""
    return "revsearch.cli.main" if (code_dir / "revsearch" / "cli" / "main.py").exists() else "revsearch.cli"


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def import_time(code_dir: Path) -> dict:
    """What importing the command line imports: every top-level import after the interpreter's start-up
    (``site``), so the ``revsearch`` package and what it imports count too."""
    done = run(code_dir, [sys.executable, "-X", "importtime", "-c", f"import {cli_module(code_dir)}"])
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


def peak_rss_mb(pid: int, peaks: dict[int, float], done: threading.Event) -> None:
    """Until ``done``: the peak resident memory (``VmHWM``) of process ``pid`` and its descendants, by pid."""
    while not done.is_set():
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        for proc in procs:
            try:
                hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text())
            except OSError:
                continue
            if hwm:
                peaks[proc.pid] = int(hwm[1]) / 1024
        done.wait(0.05)


def cli_query(code_dir: Path, index_dir: Path, image: str, env: dict) -> dict:
    args = [sys.executable, "-m", "revsearch", "query", image, "--index-dir", str(index_dir), "-k", "10"]
    peaks: dict[int, float] = {}
    done = threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tree_env(code_dir, env=env), cwd=code_dir
    )
    sampler = threading.Thread(target=peak_rss_mb, args=(proc.pid, peaks, done))
    sampler.start()
    out, err = proc.communicate(timeout=600)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(err[-2000:])
    return {"seconds": seconds, "rss_mb": sum(peaks.values())}


SERVED = ", shared, file served"


def lite_query(code_dir: Path, index_dir: Path, image: str, label: str, env: dict) -> dict:
    """A cold query; first the file's serving process (trees that have one) stops unless ``label`` is
    the served case."""
    db = index_dir / "revsearch.db"
    if label != SERVED:
        stop_serving(db)
    return {**cli_query(code_dir, index_dir, image, env), "serving_rss_mb": serving_rss_mb(db)}


def cli_cases(code_dir: Path, kind: str) -> dict[str, dict]:
    """Label -> extra environment of each way ``code_dir`` runs a cold ``revsearch query`` on a ``kind``
    index. With the shared-mode serving process (before it was retired), Lite queries run as the CLI's
    default with nothing serving the file, then with the file served (by the serving process the query
    before started), and in own mode; in the order given."""
    if kind != "milvus" or not (code_dir / "revsearch" / "lite_server.py").exists():
        return {"": {}}
    return {", own server": {"REVSEARCH_LITE_SERVER": "own"}, ", shared, nothing serving": {}, SERVED: {}}


def serving_pid(db: Path) -> int | None:
    """The process that serves the Lite file ``db`` in a tree with the serving process, or None."""
    try:
        return json.loads(Path(f"{db}.revsearch.serve").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def stop_serving(db: Path) -> None:
    if (pid := serving_pid(db)) is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        while Path(f"{db}.revsearch.serve").exists() or psutil.pid_exists(pid):
            time.sleep(0.05)


def serving_rss_mb(db: Path) -> float | None:
    """Resident memory of the process serving ``db`` and its Milvus Lite server, or None."""
    if (pid := serving_pid(db)) is None:
        return None
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    except psutil.Error:
        return None


def interleaved(repeats: int, measures: dict) -> dict:
    """Run each of ``measures`` (key -> callable returning a dict) once per repeat, in turn; per key the
    first run's dict with the median of each number, and ``runs``: every run's numbers."""
    runs: dict = {key: [] for key in measures}
    for _ in range(repeats):
        for key, measure in measures.items():
            runs[key].append(measure())
    out = {}
    for key, rs in runs.items():
        numbers = [k for k, v in rs[0].items() if isinstance(v, (int, float))]
        medians = {k: statistics.median(r[k] for r in rs) for k in numbers if all(r[k] is not None for r in rs)}
        out[key] = {**rs[0], **medians, "runs": [{k: r[k] for k in numbers} for r in rs]}
    return out


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
import revsearch.brain_backend  # noqa: F401  (registers backend="revsearch", in every tree)
sys.path.insert(0, sys.argv[3])
from vector_search import synthetic
n, tmp = int(sys.argv[1]), sys.argv[2]
dataset = fo.Dataset(f"bench-latency-{n}-{uuid.uuid4().hex[:8]}", persistent=True)  # outlives this process
dataset.add_samples([fo.Sample(filepath=f"/synthetic/{i}.jpg") for i in range(n)], progress=False)
data = synthetic(n, 128)
fob.compute_similarity(dataset, embeddings=data, brain_key="ivf", backend="revsearch", index_kind="kmeans")
fob.compute_similarity(dataset, embeddings=data, brain_key="lite", backend="revsearch", index_kind="milvus",
                       uri=f"{tmp}/b{uuid.uuid4().hex[:8]}.db")
dataset.load_brain_results("lite")._handle.release()  # let the probe processes open the Lite file
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
    parser.add_argument("--name", default="latency", help="results file and docs marker (bench:NAME)")
    args = parser.parse_args()
    seed_torch_cache()
    tmp = Path(tempfile.mkdtemp(prefix="revsearch-latency-"))
    os.environ.setdefault("REVSEARCH_CACHE", str(tmp / "cache"))
    versions = {"this tree": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    for code in versions.values():
        check_tree(code)
    rows: list[dict] = []
    try:
        startup = {
            (name, what): partial(measure, code)
            for name, code in versions.items()
            for what, measure in (("import", import_time), ("plugin", plugin_load))
        }
        for (name, what), r in interleaved(args.repeats, startup).items():
            rows.append(
                {
                    "measure": f"import {cli_module(versions[name])}" if what == "import" else "plugin load (register)",
                    "code": name,
                    "ms": r["seconds"] * 1000,
                    "heavy modules loaded": " ".join(r["loaded"]),
                }
            )
        images = caltech_images(22)
        for kind in args.cli_kinds:
            for n in args.cli_sizes:
                index_dir = tmp / f"cli-{kind}-{n}"
                build_cli_index(index_dir, n, images, kind)
                lite = index_dir / "revsearch.db"
                queries = {
                    (name, label): partial(lite_query, code, index_dir, images[0], label, env)
                    for name, code in versions.items()
                    for label, env in cli_cases(code, kind).items()
                }
                for (name, label), q in interleaved(args.repeats, queries).items():
                    rows.append(
                        {
                            "measure": f"revsearch query (cold process), {kind}{label}",
                            "N": n,
                            "code": name,
                            "ms": q["seconds"] * 1000,
                            "rss MB": q["rss_mb"],
                            "serving process rss MB": q["serving_rss_mb"],
                            "runs": q["runs"],
                        }
                    )
                    rows[-1] = {k: v for k, v in rows[-1].items() if v is not None}
                stop_serving(lite)
                shutil.rmtree(index_dir)
        for n in args.brain_sizes:
            for name, code in versions.items():
                dataset, query = build_brain_dataset(code, n, tmp)
                try:
                    probe = [sys.executable, "-c", BRAIN_PROBE, dataset, str(query)]
                    done = run(code, [*probe, str(args.idle_s), "ivf", "lite"])
                    # a machine that never loaded the runs: no local copy of their arrays (run_store)
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
    columns = [c for c in columns if any(c in row for row in rows)]
    meta = {
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "idle_s": args.idle_s,
        "repeats": args.repeats,
        "baseline": str(args.baseline) if args.baseline else None,
        "commits": {name: commit(code) for name, code in versions.items()},
    }
    write_results(args.name, rows, markdown_table(rows, columns), meta)


if __name__ == "__main__":
    main()
