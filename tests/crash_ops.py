"""Index operations for crash tests, runnable in a subprocess that the test kills at a write point,
and the check of the invariant every test here holds the index to.

    python tests/crash_ops.py OP FOLDER INDEX_DIR BACKEND

Invariant: the index holds exactly the good image files of FOLDER, each once, with the vector of
their current content (the 8x8 pixel extractor makes fresh embeddings cheap), the manifest agrees
with the vector store, and nothing is left over (no journal, no pending build, no old generation,
no stray Milvus collection).

``BACKEND`` + :data:`REGIONS` (e.g. ``exact+regions``): an index of regions, with MobileNetV2 region
features (:data:`REGION_FEATURES`). Its region index must also hold exactly ``per_image`` entries for
every indexed image and none for others, equal to the region entries of its current content reduced
by the index's region PCA; a state's vector of a key is then its image vector followed by its entries.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from revsearch import PixelFeatures, SearchIndex
from revsearch.features.factory import make_extractor
from revsearch.features.pipeline import FeatureExtractor
from revsearch.files import list_images
from revsearch.folder.generations import MANIFEST, PENDING, generation_dir
from revsearch.folder.journal import JOURNAL
from revsearch.retrieval.options import RetrievalOptions

REPO = Path(__file__).resolve().parents[1]
EXTRACTOR_SIZE = 8
MOVED_DB = "moved.db"
#: Suffix of a backend whose index holds regions, e.g. ``exact+regions``.
REGIONS = "+regions"
#: Region features (14 entries an image at the 224-pixel input): real weights, as random ones give
#: every small test image the same vector.
REGION_FEATURES = {"type": "cnn", "backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1", "regions": [2, 3]}
#: Their full description (with the weights' digest and id), passed to subprocesses: with it they open
#: the cached ONNX export without importing torch, as an index reopened from its manifest does.
DESCRIPTION_ENV = "CRASH_OPS_REGION_FEATURES"


@functools.cache
def region_description() -> str:
    return json.dumps(make_extractor(REGION_FEATURES).describe())


def extractor(backend: str = "pixel") -> FeatureExtractor:
    if not backend.endswith(REGIONS):
        return PixelFeatures(EXTRACTOR_SIZE, batch_size=2)
    description = json.loads(os.environ.get(DESCRIPTION_ENV) or region_description())
    return make_extractor({**description, "batch_size": 2})


def write_image(path: Path, seed: int) -> None:
    """A small PNG whose pixels depend on ``seed`` (distinct seeds give distinct vectors)."""
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def build(folder: str, index_dir: str, backend: str) -> None:
    index, _ = SearchIndex.build(
        list_images([folder]),
        index_dir,
        backend.removesuffix(REGIONS),
        extractor(backend),
        pca_dim=None,
        progress=False,
        chunk_size=2,
        roots=[folder],
        options=RetrievalOptions.off(),  # stored vectors as embedded (no DBA)
    )
    close(index)


def sync(folder: str, index_dir: str, backend: str) -> None:
    index = SearchIndex.load(index_dir)
    try:
        index.sync(list_images([folder]), progress=False)
    finally:
        close(index)


def remove(folder: str, index_dir: str, backend: str) -> None:
    """Remove the keys of files deleted from the folder (the caller deletes them first)."""
    index = SearchIndex.load(index_dir)
    try:
        index.remove([k for k in index.items if not os.path.exists(k)])
    finally:
        close(index)


def move(folder: str, index_dir: str, backend: str) -> None:
    """Move a Milvus index to another Lite file, unless a previous run already did."""
    index = SearchIndex.load(index_dir)
    target = str(Path(index_dir) / MOVED_DB)
    try:
        if index.backend.uri != target:
            index.move_to(target, progress=False)
    finally:
        close(index)


def index(folder: str, index_dir: str, backend: str) -> None:
    """What ``revsearch index FOLDER`` does: build the first time, sync afterwards."""
    (sync if (Path(index_dir) / MANIFEST).exists() else build)(folder, index_dir, backend)


OPERATIONS = {"build": build, "sync": sync, "remove": remove, "move": move, "index": index}


def close(index: SearchIndex) -> None:
    index.close()


def stored_vectors(index: SearchIndex, keys: list[str]) -> np.ndarray:
    """The image vectors of ``keys``, in an index of regions followed by their region entries."""
    vectors = index.backend.vectors(keys)
    if index.regions is None:
        return vectors
    regions = index.regions.index.vectors(index.regions.keys(keys)).reshape(len(keys), -1)
    return np.hstack([vectors, regions])


def snapshot(index_dir: Path) -> dict[str, np.ndarray]:
    """Key -> stored vector of a committed index (to recognise it after a crash)."""
    index = SearchIndex.load(index_dir)
    try:
        keys = sorted(index.items)
        return dict(zip(keys, stored_vectors(index, keys)))
    finally:
        close(index)


def fresh(folder: Path, backend: str = "pixel", index_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Key -> vector of every good image in ``folder``, embedded now; with regions, followed by its region
    entries reduced by the region PCA of the index in ``index_dir`` (a build over the same files, resumed
    or not, fits the same one)."""
    paths = list_images([folder])
    batch = extractor(backend).embed_paths(paths, progress=False)
    vectors = batch.vectors
    if vectors.ndim == 3:
        index = SearchIndex.load(index_dir)
        try:
            vectors = np.hstack([vectors[:, 0], index.regions.reduce(vectors).reshape(len(vectors), -1)])
        finally:
            close(index)
    return {paths[i]: v for i, v in zip(batch.indices, vectors)}


def index_state(index_dir: Path) -> dict[str, np.ndarray] | None:
    """Open the index as a reader would (recovering it) and return key -> vector, after checking
    that the manifest and the store agree and hold each key once; None if no index was committed."""
    if not (index_dir / MANIFEST).exists():
        return None
    index = SearchIndex.load(index_dir)
    try:
        keys = index.backend.keys()
        assert len(keys) == len(set(keys)) == len(index), f"duplicate vectors: {len(keys)} keys, {len(index)} rows"
        assert set(keys) == set(index.items), f"store and manifest disagree: {set(keys) ^ set(index.items)}"
        check = index.check()
        assert check["manifest_items"] == check["store_vectors"], check
        if index.regions is not None:  # exactly per_image entries for each image, none for others
            entries = index.regions.index.keys()
            assert len(entries) == len(set(entries)), f"duplicate region entries: {len(entries)} keys"
            wanted = set(index.regions.keys(list(index.items)))
            assert set(entries) == wanted, f"region entries and manifest disagree: {set(entries) ^ wanted}"
            assert not (check["regions_only_in_store"] or check["regions_only_in_manifest"]), check
            assert not check["regions_incomplete"], check
        return dict(zip(sorted(keys), stored_vectors(index, sorted(keys))))
    finally:
        close(index)


def same_state(state: dict[str, np.ndarray] | None, expected: dict[str, np.ndarray] | None) -> bool:
    if state is None or expected is None:
        return state is expected
    return state.keys() == expected.keys() and all(np.allclose(state[k], expected[k], atol=1e-3) for k in state)


def counts(state: dict[str, np.ndarray] | None, expected: dict[str, np.ndarray]) -> dict[str, int]:
    """Lost (good files missing), stale (old vectors) and orphaned (keys of no good file) entries."""
    state = state or {}
    return {
        "lost": len(expected.keys() - state.keys()),
        "stale": sum(not np.allclose(state[k], expected[k], atol=1e-3) for k in state.keys() & expected.keys()),
        "orphaned": len(state.keys() - expected.keys()),
    }


def leftovers(index_dir: Path) -> list[str]:
    """Anything a finished run should not leave behind."""
    found = [name for name in (JOURNAL, PENDING, "partial", MANIFEST + ".tmp") if (index_dir / name).exists()]
    index = SearchIndex.load(index_dir)
    try:
        live = generation_dir(index_dir, index.generation).name
        found += [p.name for p in index_dir.glob("gen-*") if p.name != live]
        if index.backend.kind == "milvus":  # (MilvusIndex is not imported: pymilvus costs a subprocess 0.4 s)
            kept = {index.backend.collection} | ({index.regions.index.collection} if index.regions else set())
            found += [c for c in index.backend.client.list_collections() if c not in kept]
    finally:
        close(index)
    return found


def run_op(op: str, folder: Path, index_dir: Path, backend: str, **env) -> subprocess.CompletedProcess:
    """Run an operation in a subprocess (``env`` adds REVSEARCH_CRASH_* variables)."""
    command = [sys.executable, __file__, "build" if op == "rebuild" else op, str(folder), str(index_dir), backend]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if backend.endswith(REGIONS):
        env = {DESCRIPTION_ENV: region_description(), **env}
    return subprocess.run(
        command, env={**os.environ, "PYTHONPATH": path, **env}, capture_output=True, text=True, timeout=300
    )


if __name__ == "__main__":
    OPERATIONS[sys.argv[1]](*sys.argv[2:5])
