"""Embeddings written to disk chunk by chunk while indexing, so a killed run resumes where it stopped.

Each chunk is an ``.npz`` (keys, vectors, failures) written to a temporary name and renamed, so a
chunk on disk is always complete. The folder is tied to the extractor that produced it: a run with
another model starts afresh instead of mixing vectors.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class EmbeddingCheckpoint:
    """Chunks of (keys, vectors, failures) in ``folder``; iterate them back in order."""

    def __init__(self, folder: Path, extractor_description: dict):
        self.folder = Path(folder)
        marker = self.folder / "extractor.json"
        if marker.exists() and json.loads(marker.read_text()) != extractor_description:
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(extractor_description))
        self._next = len(self._chunk_files())

    def _chunk_files(self) -> list[Path]:
        return sorted(self.folder.glob("chunk_*.npz"))

    def done(self) -> tuple[set[str], dict[str, str]]:
        """Keys already embedded and failures already recorded (read without loading vectors)."""
        keys: set[str] = set()
        failures: dict[str, str] = {}
        for file in self._chunk_files():
            with np.load(file) as data:
                keys.update(data["keys"].tolist())
                failures.update(json.loads(str(data["failures"])))
        return keys, failures

    def write(self, keys: list[str], vectors: np.ndarray, failures: dict[str, str]) -> None:
        tmp = self.folder / f"tmp_{self._next:06d}.npz"
        np.savez(tmp, keys=np.array(keys, dtype=str), vectors=vectors, failures=json.dumps(failures))
        tmp.replace(self.folder / f"chunk_{self._next:06d}.npz")
        self._next += 1

    def chunks(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(keys, vectors) of each chunk, in the order written; one chunk in memory at a time."""
        for file in self._chunk_files():
            with np.load(file) as data:
                if len(data["keys"]):
                    yield data["keys"].tolist(), data["vectors"]

    def sample(self, limit: int, seed: int = 0) -> np.ndarray:
        """Up to ``limit`` vectors drawn evenly from every chunk (for fitting PCA / K-means)."""
        sizes = []
        for file in self._chunk_files():
            with np.load(file) as data:
                sizes.append(len(data["keys"]))
        total = sum(sizes)
        rng = np.random.default_rng(seed)
        parts = []
        for (_, vectors), size in zip(self.chunks(), [s for s in sizes if s]):
            take = size if total <= limit else max(1, round(limit * size / total))
            parts.append(vectors if take >= size else vectors[rng.choice(size, take, replace=False)])
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
