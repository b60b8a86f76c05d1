"""A saved, updatable reverse-image-search index: features -> optional PCA -> vector backend.

>>> index = SearchIndex.build(paths, "index_dir", backend="milvus")   # doctest: +SKIP
>>> index.query("query.jpg", k=10)                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .embedder import Embedder, EmbedderConfig
from .errors import IndexMismatchError, IndexNotFoundError
from .exact_index import ExactIndex
from .extractor import FeatureExtractor
from .hits import Hit
from .ivf_index import IVFIndex
from .milvus_index import DEFAULT_URI, MilvusIndex
from .pca import PCAReducer
from .pixel import PixelFeatures
from .query_source import ImageQuery, load_query_image

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
BACKENDS = ("exact", "kmeans", "milvus", "pixel")


@dataclass
class IndexReport:
    """What an indexing run did: keys added, removed, skipped as unchanged, and failures by path."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{len(self.added)} indexed, {self.unchanged} unchanged, {len(self.removed)} removed, "
                f"{len(self.failures)} skipped")


def file_signature(path: str) -> list[float]:
    """(size, mtime) of a file, used to detect files changed since indexing."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime]


def make_extractor(description: dict) -> FeatureExtractor:
    """Rebuild the extractor an index was built with from its stored description."""
    if description["type"] == "pixel":
        return PixelFeatures(description["size"])
    keys = ("backbone", "weights", "pooling", "gem_p", "image_size")
    return Embedder(EmbedderConfig(**{k: description[k] for k in keys}))


def _make_backend(backend: str, vectors: np.ndarray, dim: int, dtype: np.dtype, options: dict):
    if backend in ("exact", "pixel"):
        return ExactIndex(dim, dtype)
    if backend == "kmeans":
        return IVFIndex.fit(vectors, options.get("n_clusters"), options.get("nprobe"))
    if backend == "milvus":
        keys = ("collection", "uri", "token", "db_name", "metric", "index_type", "index_params", "search_params")
        return MilvusIndex(dim, overwrite=True, **{k: options[k] for k in keys if k in options})
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class SearchIndex:
    """Extractor + optional PCA + vector backend, persisted in a directory (``manifest.json``)."""

    def __init__(self, directory: str | os.PathLike, extractor: FeatureExtractor, backend,
                 reducer: PCAReducer | None = None, items: dict[str, dict] | None = None,
                 failures: dict[str, str] | None = None):
        self.directory = Path(directory)
        self.extractor, self.backend, self.reducer = extractor, backend, reducer
        self.items: dict[str, dict] = items or {}
        self.failures: dict[str, str] = failures or {}

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, paths: Sequence[str | os.PathLike], directory: str | os.PathLike, backend: str = "milvus",
              extractor: FeatureExtractor | None = None, pca_dim: int | None = None, whiten: bool = False,
              progress: bool = True, **backend_options) -> tuple["SearchIndex", IndexReport]:
        """Embed ``paths``, fit PCA / K-means if asked, fill the backend and save the index.

        Always builds from scratch (an existing Milvus collection of the same name is replaced);
        use :meth:`add_paths` / :meth:`sync` to update an index incrementally.

        ``backend``: ``exact`` (numpy), ``kmeans`` (IVF; ``n_clusters``, ``nprobe``), ``milvus``
        (``uri`` default ``revsearch.db`` = Milvus Lite, ``collection``, ``index_type``...), or
        ``pixel`` (the pixel-distance baseline: thumbnails + exact search).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "pixel":
            extractor = extractor if isinstance(extractor, PixelFeatures) else PixelFeatures()
        extractor = extractor or Embedder()
        paths = [os.path.abspath(p) for p in paths]
        batch = extractor.embed_paths(paths, progress)
        keys = [paths[i] for i in batch.indices]
        report = IndexReport(added=keys, failures={paths[i]: r for i, r in batch.failures.items()})
        if not keys:
            raise IndexMismatchError(f"none of the {len(paths)} files could be indexed: {report.failures}")
        reducer = PCAReducer.fit(batch.vectors, pca_dim, whiten) if pca_dim else None
        vectors = reducer.transform(batch.vectors) if reducer else batch.vectors
        if backend == "milvus":
            backend_options.setdefault("collection", _collection_name(directory))
            backend_options.setdefault("uri", str(Path(directory) / DEFAULT_URI))
        store = _make_backend(backend, vectors, vectors.shape[1], extractor.dtype, backend_options)
        store.add(keys, vectors)
        items = {k: {"path": k, "signature": file_signature(k)} for k in keys}
        index = cls(directory, extractor, store, reducer, items, report.failures)
        index.save()
        return index, report

    def add_paths(self, paths: Sequence[str | os.PathLike], progress: bool = True) -> IndexReport:
        """Index new or changed files; unchanged ones are skipped (idempotent re-runs)."""
        report = IndexReport()
        todo = []
        for p in map(os.path.abspath, paths):
            item = self.items.get(p)
            if item is not None and os.path.exists(p) and item["signature"] == file_signature(p):
                report.unchanged += 1
            else:
                todo.append(p)
        batch = self.extractor.embed_paths(todo, progress)
        keys = [todo[i] for i in batch.indices]
        if keys:
            self.backend.add(keys, self.transform(batch.vectors))
        for k in keys:
            self.items[k] = {"path": k, "signature": file_signature(k)}
            self.failures.pop(k, None)
        report.added = keys
        report.failures = {todo[i]: r for i, r in batch.failures.items()}
        self.failures.update(report.failures)
        self.save()
        return report

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete keys from the index; returns those that were present."""
        present = [k for k in keys if k in self.items]
        if present:
            self.backend.remove(present)
            for k in present:
                del self.items[k]
            self.save()
        return present

    def sync(self, paths: Sequence[str | os.PathLike], progress: bool = True) -> IndexReport:
        """Make the index match ``paths``: add new / changed files, remove the ones gone."""
        wanted = {os.path.abspath(p) for p in paths}
        gone = [k for k in self.items if k not in wanted or not os.path.exists(k)]
        removed = self.remove(gone)
        report = self.add_paths(sorted(wanted - set(gone)), progress)
        report.removed = removed
        return report

    def stale(self) -> dict[str, list[str]]:
        """Indexed files that are missing or changed on disk since indexing."""
        missing, changed = [], []
        for key, item in self.items.items():
            if not os.path.exists(item["path"]):
                missing.append(key)
            elif file_signature(item["path"]) != item["signature"]:
                changed.append(key)
        return {"missing": missing, "changed": changed}

    # ---- querying ---------------------------------------------------------------------------
    def transform(self, features: np.ndarray) -> np.ndarray:
        """Apply the index's stored PCA (if any) to raw features."""
        return self.reducer.transform(features) if self.reducer else features

    def embed_query(self, query: ImageQuery, allow_private_urls: bool = False) -> np.ndarray:
        """The query image's vector, with exactly the index's extractor and PCA."""
        image = load_query_image(query, self.extractor.min_side, allow_private_urls)
        return self.transform(self.extractor.embed_images([image]))

    def query(self, query: ImageQuery, k: int = 10, allow_private_urls: bool = False) -> list[Hit]:
        """The ``k`` indexed images nearest to the query image, nearest first."""
        return self.backend.search(self.embed_query(query, allow_private_urls), k)[0]

    def query_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Search with vectors already in the index's space (after PCA)."""
        return self.backend.search(vectors, k)

    def __len__(self) -> int:
        return len(self.backend)

    # ---- persistence ------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "extractor": self.extractor.describe(),
            "pca": self.reducer.config() if self.reducer else None,
            "backend": self.backend.config(),
            "items": self.items,
            "failures": self.failures,
        }

    def save(self) -> None:
        """Write the manifest and backend files atomically enough: manifest last."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(self.directory)
        if self.reducer:
            self.reducer.save(self.directory / "pca.npz")
        tmp = self.directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=1))
        tmp.replace(self.directory / MANIFEST)

    @classmethod
    def load(cls, directory: str | os.PathLike, token: str = "") -> "SearchIndex":
        """Re-open a saved index (its Milvus collection is reconnected from the stored URI)."""
        directory = Path(directory)
        if not (directory / MANIFEST).exists():
            raise IndexNotFoundError(f"no revsearch index in {directory} (missing {MANIFEST})")
        manifest = json.loads((directory / MANIFEST).read_text())
        extractor = make_extractor(manifest["extractor"])
        reducer = PCAReducer.load(directory / "pca.npz") if manifest["pca"] else None
        config = manifest["backend"]
        loaders = {"exact": ExactIndex.load, "kmeans": IVFIndex.load}
        if config["kind"] == "milvus":
            backend = MilvusIndex.load(directory, config, token)
        else:
            backend = loaders[config["kind"]](directory, config)
        return cls(directory, extractor, backend, reducer, manifest["items"], manifest["failures"])


def _collection_name(directory: str | os.PathLike) -> str:
    """A valid Milvus collection name derived from the index directory name."""
    name = "".join(c if c.isalnum() else "_" for c in Path(directory).resolve().name)
    return f"revsearch_{name}"[:255]
