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
from tqdm.auto import tqdm

from .checkpoint import EmbeddingCheckpoint
from .embedder import Embedder, EmbedderConfig
from .errors import IndexMismatchError, IndexNotFoundError
from .exact_index import ExactIndex
from .extractor import FeatureExtractor
from .hits import Hit
from .ivf_index import IVFIndex, default_n_clusters
from .milvus_bulk import BulkStorage
from .milvus_index import DEFAULT_URI, MilvusIndex
from .milvus_move import copy_collection, same_collection_place
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
    resumed: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"{len(self.added)} indexed, {self.unchanged} unchanged, {len(self.removed)} removed, "
                f"{len(self.failures)} skipped")
        return text + (f" ({self.resumed} resumed from an interrupted run)" if self.resumed else "")


def file_signature(path: str) -> list[float]:
    """(size, mtime) of a file, used to detect files changed since indexing."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime]


def _embed_to_checkpoint(extractor: FeatureExtractor, paths: list[str], checkpoint: EmbeddingCheckpoint,
                         chunk_size: int, progress: bool) -> None:
    """Embed ``paths`` and write a checkpoint chunk every ``chunk_size`` images."""
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    failures: dict[str, str] = {}
    for batch in extractor.iter_batches(paths, progress):
        keys.extend(paths[i] for i in batch.indices)
        vectors.append(batch.vectors)
        failures.update({paths[i]: r for i, r in batch.failures.items()})
        if len(keys) + len(failures) >= chunk_size:
            checkpoint.write(keys, np.concatenate(vectors), failures)
            keys, vectors, failures = [], [], {}
    if keys or failures:
        checkpoint.write(keys, np.concatenate(vectors) if vectors else np.empty((0, extractor.dim)), failures)


AUTO_PCA_DIM, AUTO_PCA_MIN_VECTORS = 128, 1000


def _auto_pca_dim(n_vectors: int, dim: int, extractor: FeatureExtractor) -> int | None:
    """PCA-128 for CNN descriptors of sets large enough to fit it well; nothing otherwise."""
    if isinstance(extractor, PixelFeatures) or n_vectors < AUTO_PCA_MIN_VECTORS or dim <= AUTO_PCA_DIM:
        return None
    return AUTO_PCA_DIM


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
        keys = ("collection", "uri", "token", "db_name", "metric", "index_type", "index_params", "search_params",
                "consistency_level")
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
              extractor: FeatureExtractor | None = None, pca_dim: int | str | None = "auto",
              whiten: bool = False, progress: bool = True, chunk_size: int = 1024, fit_sample: int = 100_000,
              **backend_options) -> tuple["SearchIndex", IndexReport]:
        """Embed ``paths``, fit PCA / K-means if asked, fill the backend and save the index.

        ``backend``: ``exact`` (numpy), ``kmeans`` (IVF; ``n_clusters``, ``nprobe``), ``milvus``
        (``uri`` default ``<directory>/revsearch.db`` = Milvus Lite, ``collection``, ``index_type``...),
        or ``pixel`` (the pixel-distance baseline: thumbnails + exact search).

        ``pca_dim="auto"`` (default) reduces CNN descriptors to 128 dimensions with PCA when at least
        1,000 images are indexed (the best measured trade-off on Caltech-101, see README), and keeps
        them whole for smaller sets; give a number to force it, or None for no PCA.

        Embeddings are checkpointed to ``<directory>/partial/`` every ``chunk_size`` images, so a run
        that is killed resumes where it stopped. PCA and K-means are fitted on at most ``fit_sample``
        vectors, and vectors reach the backend one chunk at a time (bounded memory for Milvus).
        Always builds the index anew (an existing Milvus collection of the same name is replaced);
        use :meth:`add_paths` / :meth:`sync` to update an index incrementally.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "pixel":
            extractor = extractor if isinstance(extractor, PixelFeatures) else PixelFeatures()
        extractor = extractor or Embedder()
        directory = Path(directory)
        paths = [os.path.abspath(p) for p in paths]
        checkpoint = EmbeddingCheckpoint(directory / "partial", extractor.describe())
        done, failures = checkpoint.done()
        report = IndexReport(resumed=len(done) + len(failures))
        _embed_to_checkpoint(extractor, [p for p in paths if p not in done and p not in failures],
                             checkpoint, chunk_size, progress)
        wanted = set(paths)
        report.failures = {p: r for p, r in checkpoint.done()[1].items() if p in wanted}
        sample = checkpoint.sample(fit_sample)
        if not len(sample):
            raise IndexMismatchError(f"none of the {len(paths)} files could be indexed: {report.failures}")
        pca_dim = _auto_pca_dim(len(sample), sample.shape[1], extractor) if pca_dim == "auto" else pca_dim
        reducer = PCAReducer.fit(sample, pca_dim, whiten) if pca_dim else None
        sample = reducer.transform(sample) if reducer else sample
        if backend == "milvus":
            backend_options.setdefault("collection", _collection_name(directory))
            backend_options.setdefault("uri", str(directory / DEFAULT_URI))
        if backend == "kmeans" and not backend_options.get("n_clusters"):
            backend_options["n_clusters"] = min(len(sample), default_n_clusters(len(paths)))
        store = _make_backend(backend, sample, sample.shape[1], extractor.dtype, backend_options)
        bar = tqdm(total=len(paths) - len(report.failures), desc=f"insert into {backend}", unit="vec",
                   disable=not progress)
        try:
            for keys, vectors in checkpoint.chunks():
                keep = [i for i, k in enumerate(keys) if k in wanted]
                if keep:
                    store.add([keys[i] for i in keep], reducer.transform(vectors[keep]) if reducer else vectors[keep])
                    report.added.extend(keys[i] for i in keep)
                    bar.update(len(keep))
            bar.close()
            items = {k: {"path": k, "signature": file_signature(k)} for k in report.added}
            index = cls(directory, extractor, store, reducer, items, report.failures)
            index.save()
        except BaseException:
            if isinstance(store, MilvusIndex):
                store.close()  # release the Lite file; the checkpoint lets a re-run finish the job
            raise
        checkpoint.clear()
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

    def move_to(self, uri: str, token: str = "", db_name: str = "", index_type: str | None = None,
                bulk_storage: BulkStorage | None = None, progress: bool = True) -> None:
        """Move a Milvus-backed index to another Milvus (e.g. its Lite file to ``http://host:19530``)
        without re-embedding: vectors are copied (bulk import where ``bulk_storage`` is given and the
        server has it), counts checked, then the manifest points at the new URI. The source collection
        is left as it was; a failed copy leaves the index on the source."""
        source = self.backend
        if not isinstance(source, MilvusIndex):
            raise ValueError(f"move_to needs a milvus backend, this index is {source.kind!r}: rebuild it with "
                             "backend='milvus' and uri=...")
        config = source.config()
        if same_collection_place(source.uri, source.db_name, uri, db_name):
            raise ValueError(f"the index is already at {uri!r}: moving it there would replace its own collection")
        target = MilvusIndex(source.dim, source.collection, uri, token, db_name, config["metric"],
                             index_type or config["index_type"], None if index_type else config["index_params"],
                             None if index_type else config["search_params"], overwrite=True,
                             consistency_level=config["consistency_level"], bulk_storage=bulk_storage)
        try:
            copy_collection(source, target, progress)
        except BaseException:
            target.close()
            raise
        self.backend = target
        self.save()
        source.close()

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
