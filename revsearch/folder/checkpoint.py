"""Embeddings written to disk chunk by chunk while indexing, so a killed run resumes where it stopped.

Each chunk is an ``.npz`` (keys, vectors, file signatures), written atomically. The folder is tied to
its extractor, and an embedding is reused only if its file's signature is unchanged.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from revsearch.crashpoints import write_point
from revsearch.folder.atomic import write_atomic

Signature = list[float]


class EmbeddingCheckpoint:
    """Chunks of (keys, vectors, signatures) in ``folder``, filtered against ``current`` signatures."""

    def __init__(self, folder: Path, extractor_description: dict, current: dict[str, Signature | None]):
        self.folder = Path(folder)
        self.current = current
        self.notes: list[str] = []
        marker = self.folder / "extractor.json"
        if marker.exists() and _read_json(marker) != extractor_description:
            self.notes.append(f"discarded the checkpoint in {self.folder}: it was made with another extractor")
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink()
        write_atomic(marker, json.dumps(extractor_description).encode())
        self._valid: dict[Path, np.ndarray] = {}  # chunk file -> mask of its reusable rows
        stale = 0
        for file in self._chunk_files():
            try:
                with np.load(file) as data:
                    keys, signatures = data["keys"].tolist(), json.loads(str(data["signatures"]))
            except Exception:  # unreadable chunk (e.g. from another version): embed its files again
                self.notes.append(f"discarded an unreadable checkpoint chunk {file.name}")
                file.unlink()
                continue
            mask = np.array([self.current.get(k) == s for k, s in zip(keys, signatures)], dtype=bool)
            stale += int((~mask).sum())
            self._valid[file] = mask
        if stale:
            self.notes.append(
                f"{stale} checkpointed embeddings were of files changed or gone since; those files are embedded again"
            )
        self._next = int(self._chunk_files()[-1].stem.split("_")[1]) + 1 if self._chunk_files() else 0

    def _chunk_files(self) -> list[Path]:
        return sorted(self.folder.glob("chunk_*.npz"))

    def done(self) -> set[str]:
        """Keys whose checkpointed embedding is still valid (their file is unchanged)."""
        keys: set[str] = set()
        for file, mask in self._valid.items():
            with np.load(file) as data:
                keys.update(k for k, ok in zip(data["keys"].tolist(), mask) if ok)
        return keys

    def write(self, keys: list[str], vectors: np.ndarray) -> None:
        """Add a chunk of embeddings of files whose signatures are in ``current``."""
        signatures = [self.current.get(k) for k in keys]
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(keys, dtype=str), vectors=vectors, signatures=np.array(json.dumps(signatures)))
        file = self.folder / f"chunk_{self._next:06d}.npz"
        write_atomic(file, buffer.getvalue())
        self._valid[file] = np.ones(len(keys), dtype=bool)
        self._next += 1
        write_point("checkpoint chunk written")

    def chunks(self) -> Iterator[tuple[list[str], np.ndarray, list[Signature]]]:
        """(keys, vectors, signatures) of the valid rows of each chunk, each key once, in the order written."""
        seen: set[str] = set()
        for file, mask in sorted(self._valid.items()):
            with np.load(file) as data:
                keys, signatures = data["keys"].tolist(), json.loads(str(data["signatures"]))
                rows = [i for i, k in enumerate(keys) if mask[i] and k not in seen]
                if rows:
                    seen.update(keys[i] for i in rows)
                    vectors = data["vectors"] if len(rows) == len(keys) else data["vectors"][rows]
                    yield [keys[i] for i in rows], vectors, [signatures[i] for i in rows]

    def sample(self, limit: int, seed: int = 0, first_entry: bool = False) -> np.ndarray:
        """Up to ``limit`` valid vectors drawn evenly from every chunk (for fitting PCA / K-means); with
        ``first_entry``, of an extractor with several entries per image (regions) only the first."""
        total = len(self.done())
        rng = np.random.default_rng(seed)
        parts = []
        for _, vectors, _ in self.chunks():
            vectors = vectors[:, 0] if first_entry and vectors.ndim == 3 else vectors
            size = len(vectors)
            take = size if total <= limit else max(1, round(limit * size / total))
            parts.append(vectors if take >= size else vectors[rng.choice(size, take, replace=False)])
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        write_point("checkpoint cleared")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
