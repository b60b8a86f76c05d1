"""Index operations for crash tests, runnable in a subprocess that the test kills at a write point,
and the check of the invariant every test here holds the index to.

    python tests/crash_ops.py OP FOLDER INDEX_DIR BACKEND

Invariant: the index holds exactly the good image files of FOLDER, each once, with the vector of
their current content (the 8x8 pixel extractor makes fresh embeddings cheap), the manifest agrees
with the vector store, and nothing is left over (no journal, no pending build, no old generation,
no stray Milvus collection).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from revsearch import MilvusIndex, PixelFeatures, SearchIndex
from revsearch.files import list_images
from revsearch.folder.generations import MANIFEST, PENDING, generation_dir
from revsearch.folder.journal import JOURNAL

REPO = Path(__file__).resolve().parents[1]
EXTRACTOR_SIZE = 8
MOVED_DB = "moved.db"


def extractor() -> PixelFeatures:
    return PixelFeatures(EXTRACTOR_SIZE, batch_size=2)


def write_image(path: Path, seed: int) -> None:
    """A small PNG whose pixels depend on ``seed`` (distinct seeds give distinct vectors)."""
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def build(folder: str, index_dir: str, backend: str) -> None:
    index, _ = SearchIndex.build(
        list_images([folder]),
        index_dir,
        backend,
        extractor(),
        pca_dim=None,
        progress=False,
        chunk_size=2,
        roots=[folder],
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
    if isinstance(index.backend, MilvusIndex):
        index.backend.close()


def stored_vectors(index: SearchIndex, keys: list[str]) -> np.ndarray:
    return index.backend.vectors(keys)


def snapshot(index_dir: Path) -> dict[str, np.ndarray]:
    """Key -> stored vector of a committed index (to recognise it after a crash)."""
    index = SearchIndex.load(index_dir)
    try:
        keys = sorted(index.items)
        return dict(zip(keys, stored_vectors(index, keys)))
    finally:
        close(index)


def fresh(folder: Path) -> dict[str, np.ndarray]:
    """Key -> vector of every good image in ``folder``, embedded now."""
    paths = list_images([folder])
    batch = extractor().embed_paths(paths, progress=False)
    return {paths[i]: v for i, v in zip(batch.indices, batch.vectors)}


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
        if isinstance(index.backend, MilvusIndex):
            found += [c for c in index.backend.client.list_collections() if c != index.backend.collection]
    finally:
        close(index)
    return found


def run_op(op: str, folder: Path, index_dir: Path, backend: str, **env) -> subprocess.CompletedProcess:
    """Run an operation in a subprocess (``env`` adds REVSEARCH_CRASH_* variables)."""
    command = [sys.executable, __file__, "build" if op == "rebuild" else op, str(folder), str(index_dir), backend]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        command, env={**os.environ, "PYTHONPATH": path, **env}, capture_output=True, text=True, timeout=300
    )


if __name__ == "__main__":
    OPERATIONS[sys.argv[1]](*sys.argv[2:5])
