"""A saved, updatable reverse-image-search index: features -> optional PCA -> vector backend.

>>> index = SearchIndex.build(paths, "index_dir", backend="milvus")   # doctest: +SKIP
>>> index.query("query.jpg", k=10)                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from revsearch.crashpoints import write_point
from revsearch.errors import (
    DamagedFileError,
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    RevsearchError,
)
from revsearch.features.factory import make_extractor
from revsearch.features.pca import PCAReducer
from revsearch.features.pipeline import FeatureExtractor
from revsearch.features.pixel import PixelFeatures
from revsearch.features.query_source import ImageQuery, load_query_image
from revsearch.features.regions import embed_crop, entry_boxes, whole_image
from revsearch.files import file_signature, stale_files
from revsearch.folder.atomic import check_space, disk_full, disk_full_as_error, seal_tree, write_atomic
from revsearch.folder.checkpoint import EmbeddingCheckpoint
from revsearch.folder.generations import (
    CHECKPOINT,
    FORMAT_VERSION,
    JOURNAL,
    MANIFEST,
    PENDING,
    damaged,
    generation_dir,
    lite_file_problem,
    needs_recovery,
    read_manifest,
    remove_old_generations,
    resolve_lite_uri,
    set_aside,
    settle_pending,
    verify_files,
    write_pending,
)
from revsearch.folder.journal import Update, clear_journal, read_journal, write_journal
from revsearch.index.hits import Hit
from revsearch.index.ivf import default_n_clusters
from revsearch.index.lite_lock import LiteFileLock
from revsearch.index.milvus_uri import DEFAULT_URI, is_lite_uri
from revsearch.index.registry import INDEX_KINDS, LEGACY_PIXEL, check_kind, collection_name, create_index, load_index
from revsearch.locks import IndexLock
from revsearch.retrieval.options import MODES, IndexExtras, RetrievalOptions, copy_query_images
from revsearch.retrieval.regions import REGIONS_SUFFIX, RegionEntries, RegionHit, region_index_kind, split_key

if TYPE_CHECKING:
    from revsearch.index.milvus_bulk import BulkStorage

#: Index kinds ``build`` takes: :data:`~revsearch.index.registry.INDEX_KINDS`, and ``pixel`` (the
#: older name of pixel features in an exact index).
BACKENDS = (*INDEX_KINDS, LEGACY_PIXEL)
#: The PCA of a generation (format 3; format 2 wrote ``pca.npz``).
PCA_FILE = "pca.json"
#: A generation's folder of region entries (their index's files and their PCA), in an index of regions.
REGIONS_DIR = "regions"
#: Bytes a Milvus Lite file grows by per float of vector added, with room to spare (measured: 680 bytes per
#: 128-d vector), and a margin for its metadata: checked before writing, as Lite retries a full disk for minutes.
LITE_BYTES_PER_FLOAT, LITE_MARGIN = 6, 4 * 2**20
#: How long a command waits for the Milvus Lite file another command holds (a query, or an update) before
#: its busy error; and how often a reader opens the index again when updates delete the generation it opens.
BUSY_WAIT_S = float(os.environ.get("REVSEARCH_BUSY_WAIT_S", "10"))
OPEN_ATTEMPTS = 5


@dataclass
class IndexReport:
    """What an indexing run did: keys added, removed, unchanged, failures by path; ``notes`` on what was set right."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    resumed: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{len(self.added)} indexed, {self.unchanged} unchanged, {len(self.removed)} removed, "
            f"{len(self.failures)} skipped"
        )
        return text + (f" ({self.resumed} resumed from an interrupted run)" if self.resumed else "")


def _embed_to_checkpoint(
    extractor: FeatureExtractor, paths: list[str], checkpoint: EmbeddingCheckpoint, chunk_size: int, progress: bool
) -> dict[str, str]:
    """Embed ``paths``, writing a checkpoint chunk every ``chunk_size`` images; returns the failures."""
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    failures: dict[str, str] = {}
    for batch in extractor.iter_batches(paths, progress):
        keys.extend(paths[i] for i in batch.indices)
        vectors.append(batch.vectors)
        failures.update({paths[i]: r for i, r in batch.failures.items()})
        if len(keys) >= chunk_size:
            checkpoint.write(keys, np.concatenate(vectors))
            keys, vectors = [], []
    if keys:
        checkpoint.write(keys, np.concatenate(vectors))
    return failures


def _under(key: str, roots: Sequence[str]) -> bool:
    """True if ``key`` is one of ``roots`` or lies below one of them."""
    return any(key == r or key.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


AUTO_PCA_DIM, AUTO_PCA_MIN_VECTORS = 128, 1000


def _auto_pca_dim(n_vectors: int, dim: int, extractor: FeatureExtractor) -> int | None:
    """PCA-128 for CNN descriptors of sets large enough to fit it well; nothing otherwise."""
    if isinstance(extractor, PixelFeatures) or n_vectors < AUTO_PCA_MIN_VECTORS or dim <= AUTO_PCA_DIM:
        return None
    return AUTO_PCA_DIM


class SearchIndex:
    """Extractor + optional PCA + vector backend, persisted in a directory (``manifest.json``).

    Every change is a transaction (layout: :mod:`revsearch.folder.generations`): a build fills a new
    generation and switches the manifest to it atomically; an update writes a redo journal first. After
    a crash the last committed index stays usable and the next run finishes or undoes the change.
    ``regions``: each image's entries (whole image, then regions) in a second vector index of the same
    kind, kept in step with the first, for :meth:`query_regions`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        extractor: FeatureExtractor,
        backend,
        reducer: PCAReducer | None = None,
        items: dict[str, dict] | None = None,
        failures: dict[str, str] | None = None,
        generation: int = 0,
        roots: list[str] | None = None,
        extras: IndexExtras | None = None,
        regions: RegionEntries | None = None,
    ):
        self.directory = Path(os.path.abspath(directory))
        self.extras = extras or IndexExtras(RetrievalOptions.off(), backend.dim)
        self.extractor, self.backend, self.reducer, self.regions = extractor, backend, reducer, regions
        self.items: dict[str, dict] = items or {}
        self.failures: dict[str, str] = failures or {}
        self.generation = generation
        self.roots = roots
        #: SHA-256 of each file of the committed generation (None: saved before checksums, not checked).
        self.checksums: dict[str, str] | None = None
        #: What opening the index set right (an interrupted update finished); the next sync reports it.
        self.notes: list[str] = []

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        paths: Sequence[str | os.PathLike],
        directory: str | os.PathLike,
        backend: str = "milvus",
        extractor: FeatureExtractor | None = None,
        pca_dim: int | str | None = "auto",
        whiten: bool = False,
        progress: bool = True,
        chunk_size: int = 1024,
        fit_sample: int = 100_000,
        roots: Sequence[str | os.PathLike] | None = None,
        options: RetrievalOptions | None = None,
        **backend_options,
    ) -> tuple[SearchIndex, IndexReport]:
        """Embed ``paths``, fit PCA / K-means if asked, fill the backend and save the index (a new generation).

        ``backend``: ``exact``, ``kmeans`` (``n_clusters``, ``nprobe``) or ``milvus`` (``uri``, default
        ``<directory>/revsearch.db``; ``collection``, ``index_type``...); ``pixel``: pixel features, exact.
        ``pca_dim="auto"``: PCA-128 for CNN features from 1,000 images up (the best measured trade-off).
        Embeddings are checkpointed every ``chunk_size`` images (a killed run resumes); PCA and K-means
        are fitted on at most ``fit_sample`` vectors. ``roots``: the folders the paths came from.
        ``options``: alpha-QE / alpha-DBA / copy mode (default :class:`RetrievalOptions`; off for pixels).
        A :class:`~revsearch.features.regions.RegionEmbedder` extractor also indexes every image's regions.
        """
        if backend == LEGACY_PIXEL:
            extractor = extractor if isinstance(extractor, PixelFeatures) else PixelFeatures()
        backend = check_kind(backend)
        extractor = extractor or make_extractor("cnn")
        directory = Path(os.path.abspath(directory))
        paths = sorted({os.path.abspath(p) for p in paths})
        limits = {
            "pca_dim": (pca_dim, min(len(paths), extractor.dim)),
            "n_clusters": (backend_options.get("n_clusters"), len(paths)),
        }
        for name, (value, limit) in limits.items():  # checked before anything is embedded or written
            if paths and isinstance(value, int) and value > limit:
                raise ValueError(
                    f"{name} must be at most {limit} ({len(paths)} files, {extractor.dim}-d features), got {value}"
                )
        with IndexLock(directory), disk_full_as_error(directory):
            lite = _lite_path(backend, backend_options, directory)
            with _lite_turn(lite):
                recovered = _recover_for_build(directory, lite, backend_options)
            previous = read_manifest(directory) if (directory / MANIFEST).exists() else None
            generation = (previous.get("generation", 0) if previous else 0) + 1
            current = {p: file_signature(p) for p in paths}
            checkpoint = EmbeddingCheckpoint(directory / CHECKPOINT, extractor.describe(), current)
            done = checkpoint.done()
            report = IndexReport(resumed=len(done), notes=recovered + checkpoint.notes)
            report.failures = _embed_to_checkpoint(
                extractor, [p for p in paths if p not in done], checkpoint, chunk_size, progress
            )
            per_image = getattr(extractor, "per_image", 1)  # vectors per image: more with regions
            entries = checkpoint.sample(max(1, fit_sample // per_image))
            if not len(entries):
                checkpoint.clear()
                raise IndexMismatchError(f"none of the {len(paths)} files could be indexed: {report.failures}")
            # the whole-image sample a build without regions draws (the same images when all were taken)
            same = per_image == 1 or len(entries) == len(checkpoint.done())
            sample = whole_image(entries) if same else checkpoint.sample(fit_sample, first_entry=True)
            pca_dim = _auto_pca_dim(len(sample), sample.shape[1], extractor) if pca_dim == "auto" else pca_dim
            reducer = PCAReducer.fit(sample, pca_dim, whiten) if pca_dim else None
            sample = reducer.transform(sample) if reducer else sample
            _record_pending(directory, generation, previous, backend, backend_options, entries.ndim == 3)
            if backend == "kmeans" and not backend_options.get("n_clusters"):
                backend_options["n_clusters"] = min(len(sample), default_n_clusters(len(paths)))
            with _lite_turn(lite):  # the store holds the file from here until it is closed
                store = _create_backend(backend, sample, extractor.dtype, backend_options)
            if options is None:
                options = RetrievalOptions.off() if isinstance(extractor, PixelFeatures) else RetrievalOptions()
            extras, held = IndexExtras(options, sample.shape[1]), []
            bar = tqdm(
                total=len(paths) - len(report.failures), desc=f"insert into {backend}", unit="vec", disable=not progress
            )
            items: dict[str, dict] = {}
            regions, n_images = None, len(paths) - len(report.failures)
            try:
                if entries.ndim == 3:
                    regions = _create_regions(backend, entries, backend_options)
                with _lite_space(store, n_images), _lite_space(regions and regions.index, n_images * per_image):
                    for keys, vectors, signatures in checkpoint.chunks():
                        if regions is not None:
                            regions.add(keys, regions.reduce(vectors))
                        vectors = whole_image(vectors)
                        vectors = reducer.transform(vectors) if reducer else vectors
                        if extras.dba is None:
                            store.add(keys, vectors)
                        else:
                            held.append((keys, vectors))  # DBA needs every vector first
                        items.update((k, {"path": k, "signature": s}) for k, s in zip(keys, signatures))
                        bar.update(len(keys))
                    bar.close()
                    extras.finish_build(store, held, chunk_size)  # DBA, thumbnails
                extras.update_pixels([], {k: k for k in items})
                root_list = sorted({os.path.abspath(r) for r in roots}) if roots is not None else None
                failures = report.failures
                index = cls(
                    directory, extractor, store, reducer, items, failures, generation - 1, root_list, extras, regions
                )
                index._commit()
                settle_pending(directory, index.generation, backend_options.get("token", ""))  # clears partial/
            except BaseException:
                store.close()  # release a Lite file; the checkpoint lets a re-run finish the job
                if regions is not None:
                    regions.index.close()
                raise
        report.added = list(items)
        return index, report

    # ---- updating ---------------------------------------------------------------------------
    def sync(
        self,
        paths: Sequence[str | os.PathLike],
        progress: bool = True,
        scope: Sequence[str | os.PathLike] | None = None,
        roots: Sequence[str | os.PathLike] | None = None,
    ) -> IndexReport:
        """Make the index match ``paths``: add new / changed files, remove the ones gone or now unreadable.

        ``scope``: only indexed files below these folders may be removed as gone (None: all; ``--add``).
        ``roots``: the folders the index covers from now on (None keeps them).
        """
        wanted = {os.path.abspath(p) for p in paths}
        scope = None if scope is None else [os.path.abspath(s) for s in scope]
        in_scope = (lambda k: True) if scope is None else (lambda k: _under(k, scope))
        report, self.notes = IndexReport(notes=self.notes), []
        todo, current = [], {}
        for p in sorted(wanted):
            signature, item = file_signature(p), self.items.get(p)
            if item is not None and signature is not None and item["signature"] == signature:
                report.unchanged += 1
            else:
                todo.append(p)
                current[p] = signature
        batch = self.extractor.embed_paths(todo, progress)
        keys = [todo[i] for i in batch.indices]
        report.failures = {todo[i]: r for i, r in batch.failures.items()}
        gone = [k for k in self.items if in_scope(k) and k not in wanted]
        report.removed = gone + [k for k in report.failures if k in self.items]  # turned corrupt: old vector goes
        vectors = self.transform(batch.vectors) if keys else np.empty((0, self.backend.dim), np.float32)
        region_vectors = self.regions.reduce(batch.vectors) if self.regions is not None and keys else None
        forget = [k for k in self.failures if (in_scope(k) and k not in wanted) or k in keys]
        new_roots = None if roots is None else sorted({os.path.abspath(r) for r in roots})
        update = Update(
            self.generation,
            report.removed,
            keys,
            vectors,
            {k: {"path": k, "signature": current[k]} for k in keys},
            report.failures,
            forget,
            new_roots if new_roots != self.roots else None,
            region_vectors,
        )
        if not update.is_empty(self.failures):
            self._transact(update)
        report.added = keys
        return report

    def add_paths(self, paths: Sequence[str | os.PathLike], progress: bool = True) -> IndexReport:
        """Index new or changed files; unchanged ones are skipped (idempotent re-runs); nothing else is removed."""
        return self.sync(paths, progress, scope=[])

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete keys from the index; returns those that were present."""
        present = [k for k in keys if k in self.items]
        if present:
            self._transact(
                Update(self.generation, present, [], np.empty((0, self.backend.dim), np.float32), {}, {}, [])
            )
        return present

    def _transact(self, update: Update) -> None:
        """Journal ``update``, apply it to the store, commit the manifest, forget the journal."""
        with IndexLock(self.directory):
            on_disk = read_manifest(self.directory).get("generation", 0)
            if on_disk != self.generation:
                raise IndexBusyError(
                    f"the index in {self.directory} was changed by another run since it was opened; open it again"
                )
            with disk_full_as_error(self.directory):
                write_journal(self.directory, update)
            self.apply(update)
            clear_journal(self.directory)

    def apply(self, update: Update) -> None:
        """Apply a journalled update (idempotent: replaying it after a crash gives the same index)."""
        if update.remove:
            with _lite_space(self.backend, 0):  # a Milvus Lite delete writes too
                self.backend.remove(update.remove)
        keys, vectors = self.extras.store_vectors(update.remove, update.keys, update.vectors)
        if keys:
            with _lite_space(self.backend, len(keys)):
                self.backend.add(keys, vectors)
        if self.regions is not None:
            with _lite_space(self.regions.index, len(update.keys) * self.regions.per_image):
                self.regions.remove(update.remove)
                self.regions.add(update.keys, update.region_vectors)
        self.extras.update_pixels(update.remove, {k: update.items[k]["path"] for k in update.keys})
        for k in update.remove:
            self.items.pop(k, None)
        self.items.update(update.items)
        for k in update.forget_failures:
            self.failures.pop(k, None)
        self.failures.update(update.failures)
        if update.roots is not None:
            self.roots = update.roots
        self._commit()

    def stale(self) -> dict[str, list[str]]:
        """Indexed files that are missing or changed on disk since indexing."""
        return stale_files((key, item["path"], item["signature"]) for key, item in self.items.items())

    def check(self) -> dict:
        """Compare the manifest with the vector store: counts, and keys only on one side; in an index of
        regions, also the images whose region entries are only in their store or missing from it, and those
        that do not have exactly ``per_image`` of them (regions 0 to ``per_image - 1``)."""
        stored, listed = set(self.backend.keys()), set(self.items)
        counts = {
            "manifest_items": len(listed),
            "store_vectors": len(self.backend),
            "only_in_store": len(stored - listed),
            "only_in_manifest": len(listed - stored),
        }
        if self.regions is None:
            return counts
        found: dict[str, set[int]] = {}
        for image, region in map(split_key, self.regions.index.keys()):
            found.setdefault(image, set()).add(region)
        whole = set(range(self.regions.per_image))
        return counts | {
            "region_vectors": len(self.regions.index),
            "regions_only_in_store": len(found.keys() - listed),
            "regions_only_in_manifest": len(listed - found.keys()),
            "regions_incomplete": sum(found[image] != whole for image in listed & found.keys()),
        }

    # ---- querying ---------------------------------------------------------------------------
    def transform(self, features: np.ndarray) -> np.ndarray:
        """Raw features' whole-image vectors (:func:`~revsearch.features.regions.whole_image`), with the
        index's stored PCA (if any)."""
        features = whole_image(features)
        return self.reducer.transform(features) if self.reducer else features

    def embed_query(self, query: ImageQuery, allow_private_urls: bool = False) -> np.ndarray:
        """The query image's vector, with exactly the index's extractor and PCA."""
        image = load_query_image(query, self.extractor.min_side, allow_private_urls)
        return self.transform(self.extractor.embed_images([image]))

    @property
    def options(self) -> RetrievalOptions:
        return self.extras.options

    def query(
        self, query: ImageQuery, k: int = 10, allow_private_urls: bool = False, mode: str = "similar"
    ) -> list[Hit]:
        """The ``k`` indexed images nearest to the query image, nearest first (all of them if fewer).

        ``mode="similar"`` applies the stored options (alpha-QE); ``mode="copy"`` finds edited copies: CNN
        and thumbnail rankings fused (relative distances, :func:`~revsearch.retrieval.fusion.ratio_fusion`)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        k = check_k(k, len(self))
        if not k:
            return []
        image = load_query_image(query, self.extractor.min_side, allow_private_urls)
        if mode == "copy":
            vectors = self.transform(self.extractor.embed_images(copy_query_images(image)))
            return self.extras.copy_search(
                lambda v, top: self.backend.search(v, min(top, len(self))), vectors, image, k
            )
        vector = self.transform(self.extractor.embed_images([image]))
        return self.extras.search(self.backend, vector, k)[0]

    def query_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Search with vectors already in the index's space (after PCA), with the stored options."""
        return self.extras.search(self.backend, vectors, check_k(k, len(self)))

    def query_regions(self, query: ImageQuery, k: int = 10, allow_private_urls: bool = False) -> list[RegionHit]:
        """The ``k`` indexed images that contain the query crop, nearest first: each ranked by its entry
        (the whole image or a region) nearest to the crop at any of its scales, whose box it gives."""
        if self.regions is None:
            raise IndexMismatchError(
                f"the index in {self.directory} holds no regions: "
                "rebuild it with revsearch index FOLDER --rebuild --regions"
            )
        k = check_k(k, len(self))
        image = load_query_image(query, self.extractor.min_side, allow_private_urls)
        found = self.regions.search(embed_crop(self.extractor.describe(), image), k) if k else []
        boxes = entry_boxes(self.extractor.config.image_size)
        return [RegionHit(key, distance, region, tuple(boxes[region].tolist())) for key, region, distance in found]

    def __len__(self) -> int:
        return len(self.backend)

    def close(self) -> None:
        """Release the vector stores (for Milvus Lite: the file)."""
        self.backend.close()
        if self.regions is not None:
            self.regions.index.close()

    def move_to(
        self,
        uri: str,
        token: str = "",
        db_name: str = "",
        index_type: str | None = None,
        bulk_storage: BulkStorage | None = None,
        progress: bool = True,
    ) -> None:
        """Move a Milvus-backed index to another Milvus (e.g. Lite file to server) without re-embedding:
        vectors copied (bulk import with ``bulk_storage``), counts checked, manifest switched; the source
        collection (and that of the region entries) is left as it was."""
        from revsearch.index.milvus import MilvusIndex  # pymilvus: only Milvus-backed indexes need it
        from revsearch.index.milvus_move import copy_collection, same_collection_place

        source = self.backend
        if not isinstance(source, MilvusIndex):
            raise ValueError(
                f"move_to needs a milvus backend, this index is {source.kind!r}: rebuild it with "
                "backend='milvus' and uri=..."
            )
        config = source.config()
        uri = os.path.abspath(uri) if is_lite_uri(uri) else uri
        if same_collection_place(source.uri, source.db_name, uri, db_name):
            raise ValueError(f"the index is already at {uri!r}: moving it there would replace its own collection")
        kept = ("metric", "consistency_level") + (() if index_type else ("index_params", "search_params"))
        settings = {k: config[k] for k in kept} | {"index_type": index_type or config["index_type"], "overwrite": True}
        sources = [source] + ([self.regions.index] if self.regions is not None else [])
        with IndexLock(self.directory):
            targets: list[MilvusIndex] = []
            try:
                for store in sources:
                    targets.append(
                        MilvusIndex(
                            store.dim, store.collection, uri, token, db_name, bulk_storage=bulk_storage, **settings
                        )
                    )
                    copy_collection(store, targets[-1], progress)
                self._use_stores(targets)
                self._commit()
            except BaseException:
                self._use_stores(sources)
                for target in targets:
                    target.close()
                raise
        for store in sources:
            store.close()

    def _use_stores(self, stores: list) -> None:
        """Use these vector stores: the images', then (in an index of regions) the region entries'."""
        self.backend = stores[0]
        if self.regions is not None:
            self.regions.index = stores[1]

    # ---- persistence ------------------------------------------------------------------------
    def manifest(self) -> dict:
        regions = self.regions
        return {
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "roots": self.roots,
            "extractor": self.extractor.describe(),
            "pca": self.reducer.config() if self.reducer else None,
            "retrieval": self.options.to_dict(),
            "backend": self.backend.config(),
            "items": self.items,
            "failures": self.failures,
            "checksums": self.checksums,
            "regions": regions and {"per_image": regions.per_image, "backend": regions.index.config()},
        }

    def _commit(self) -> None:
        """Write the next generation's files, then switch the manifest to it atomically (the commit point)."""
        generation = self.generation + 1
        folder = generation_dir(self.directory, generation)
        if folder.exists():
            shutil.rmtree(folder)  # left by a run that died before committing it
        current = generation_dir(self.directory, self.generation)
        check_space(self.directory, sum(f.stat().st_size for f in current.rglob("*") if f.is_file()))  # about as big
        try:
            with disk_full_as_error(folder):
                folder.mkdir(parents=True)
                self.backend.save(folder)
                if self.reducer:
                    (folder / PCA_FILE).write_text(json.dumps(self.reducer.state()))
                if self.regions is not None:
                    (folder / REGIONS_DIR).mkdir()
                    self.regions.index.save(folder / REGIONS_DIR)
                    (folder / REGIONS_DIR / PCA_FILE).write_text(json.dumps(self.regions.pca.state()))
                self.extras.save(folder)
                checksums = seal_tree(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # not committed: give its space back
            raise
        write_point("generation files written")
        self.generation, self.checksums = generation, checksums
        with disk_full_as_error(self.directory / MANIFEST):
            write_atomic(self.directory / MANIFEST, json.dumps(self.manifest(), indent=1).encode())
        remove_old_generations(self.directory, generation)

    def save(self) -> None:
        """Commit the index as it is in memory (a new generation)."""
        with IndexLock(self.directory):
            self._commit()

    @classmethod
    def load(cls, directory: str | os.PathLike, token: str = "") -> SearchIndex:
        """Re-open a saved index as last committed, whole, even while another process updates it; a change
        interrupted by a crash is finished or undone first, when this process may write the index."""
        directory = Path(os.path.abspath(directory))
        notes: list[str] = []
        if needs_recovery(directory):
            try:
                with IndexLock(directory):
                    notes = recover(directory, token)
            except IndexCorruptError:
                raise  # a damaged journal or build record: say so rather than open past it
            except RevsearchError:
                pass  # read-only, or another live run is updating it: open what is committed
        index = _open_committed(cls, directory, token)
        index.notes = notes
        return index


def check_k(k: int, size: int) -> int:
    """The number of hits to ask for: ``k`` (at least 1), at most the index size."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number of at least 1, got {k!r}")
    return min(int(k), size)


def _open_committed(cls, directory: Path, token: str) -> SearchIndex:
    """The committed index, whole, while other processes may update it. An update of a Milvus Lite index
    holds the Lite file from before it changes the collection until it has committed and deleted the old
    generation, so the manifest is read again once this process holds the file. Other kinds write a new
    generation and delete the old one after the commit: a generation deleted while it was being opened is
    opened again at the new one (its files are read whole when opened, so nothing else can vanish)."""
    for _ in range(OPEN_ATTEMPTS):
        manifest = read_manifest(directory)
        lite = _lite_of(directory, manifest)
        with _lite_turn(lite):
            if lite is not None:
                manifest = read_manifest(directory)  # what the last update committed
                if _lite_of(directory, manifest) != lite:
                    continue  # moved to another Milvus meanwhile
            try:
                return _open(cls, directory, manifest, token)
            except (DamagedFileError, IndexNotFoundError):
                if read_manifest(directory).get("generation") == manifest.get("generation"):
                    raise  # damaged or lost, not replaced
    raise IndexBusyError(f"the index in {directory} changed {OPEN_ATTEMPTS} times while it was being opened; try again")


def _lite_of(directory: Path, manifest: dict) -> Path | None:
    """The Milvus Lite file a manifest's index uses (None: not a Lite index)."""
    config = manifest["backend"]
    uri = resolve_lite_uri(directory, config)["uri"] if config["kind"] == "milvus" else ""
    return Path(uri) if uri and is_lite_uri(uri) else None


@contextmanager
def _lite_turn(lite: Path | None) -> Iterator[None]:
    """Hold this process's lock on the Milvus Lite file ``lite`` for the block, waiting up to
    ``BUSY_WAIT_S`` while other commands hold it or wait for it, first come, first served
    (:meth:`~revsearch.index.lite_lock.LiteFileLock.acquire_in_turn`); what opens the file inside takes
    its own hold."""
    if lite is None or not os.access(lite.expanduser().parent, os.W_OK):  # read-only: served from a copy
        yield
        return
    lock = LiteFileLock(lite.expanduser().resolve())
    lock.acquire_in_turn(BUSY_WAIT_S)
    try:
        yield
    finally:
        lock.release()


def _open(cls, directory: Path, manifest: dict, token: str) -> SearchIndex:
    """The index a (validated) manifest describes."""
    folder = generation_dir(directory, manifest["generation"]) if "generation" in manifest else directory
    config = manifest["backend"]
    if config["kind"] == "milvus":
        config = resolve_lite_uri(directory, config)
        lite = Path(config["uri"]) if is_lite_uri(config["uri"]) else None
        if lite is not None and (problem := lite_file_problem(lite)):
            raise damaged(lite, problem)
    verify_files(folder, manifest.get("checksums") or {})
    try:
        return _open_verified(cls, directory, manifest, token, folder, config)
    except (RevsearchError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a file saved before checksums, damaged: numpy / JSON errors
        if config["kind"] == "milvus":
            raise  # a Milvus error, not a file's
        raise damaged(folder, f"cannot load its files: {type(exc).__name__}: {exc}") from None


def _open_verified(cls, directory: Path, manifest: dict, token: str, folder: Path, config: dict) -> SearchIndex:
    """The index a manifest describes, its files checked."""
    with ThreadPoolExecutor(1, thread_name_prefix="revsearch-open") as pool:  # the model loads meanwhile
        opening = pool.submit(load_index, config, folder if config["kind"] != "milvus" else directory, token)
        try:
            extractor = make_extractor(manifest["extractor"])
        except BaseException:
            opening.result().close()  # an index error is raised first: it is what the caller asked for
            raise
        backend = opening.result()
    try:
        regions = _open_regions(manifest["regions"], directory, folder, token) if manifest.get("regions") else None
    except BaseException:
        backend.close()
        raise
    reducer = None
    if manifest["pca"]:  # pca.json, or pca.npz (format 2)
        pca_file = folder / PCA_FILE
        state = json.loads(pca_file.read_text()) if pca_file.exists() else dict(np.load(folder / "pca.npz"))
        reducer = PCAReducer.from_state(state)
    extras = IndexExtras.load(folder, RetrievalOptions.from_dict(manifest.get("retrieval")), backend.dim)
    items, failures = manifest["items"], manifest["failures"]
    index = cls(directory, extractor, backend, reducer, items, failures, extras=extras, regions=regions)
    index.generation, index.roots = manifest.get("generation", 0), manifest.get("roots")
    index.checksums = manifest.get("checksums")
    return index


def _open_regions(config: dict, directory: Path, folder: Path, token: str) -> RegionEntries:
    """The region entries a manifest's ``regions`` describes (files in the generation's regions/)."""
    backend = config["backend"]
    index = load_index(backend, folder / REGIONS_DIR if backend["kind"] != "milvus" else directory, token)
    try:
        pca = PCAReducer.from_state(json.loads((folder / REGIONS_DIR / PCA_FILE).read_text()))
    except BaseException:
        index.close()
        raise
    return RegionEntries(index, pca, config["per_image"])


def recover(directory: Path, token: str = "") -> list[str]:
    """Finish or undo what a crashed run left half done (caller holds the lock); returns notes."""
    notes: list[str] = []
    committed = read_manifest(directory) if (directory / MANIFEST).exists() else None
    generation = committed.get("generation", 0) if committed else 0
    with _lite_turn(_lite_of(directory, committed)) if committed else nullcontext():
        settle_pending(directory, generation, token)
        update = read_journal(directory)
        if update is not None:
            if committed is not None and update.base_generation == generation:
                index = _open(SearchIndex, directory, committed, token)
                try:
                    index.apply(update)  # commits (and cleans up) the next generation
                finally:
                    index.close()
                generation = index.generation
                notes.append(
                    f"finished an interrupted update: {len(update.keys)} indexed, {len(update.remove)} removed"
                )
            clear_journal(directory)
    remove_old_generations(directory, generation)
    return notes


def _recover_for_build(directory: Path, lite: Path | None, options: dict) -> list[str]:
    """:func:`recover` for a build, which replaces the index: what stops it (a damaged manifest, build
    record, journal, Lite file, or a committed index that cannot be opened) is moved aside, with notes."""
    notes: list[str] = []
    while True:
        try:
            if lite is not None and (problem := lite_file_problem(lite)):
                raise damaged(lite, problem)
            recovered = recover(directory, options.get("token", ""))
            if (directory / MANIFEST).exists():  # damaged files of the generation the build replaces: moved aside
                manifest = read_manifest(directory)
                verify_files(generation_dir(directory, manifest.get("generation", 0)), manifest.get("checksums") or {})
            return notes + recovered
        except DamagedFileError as exc:
            path = Path(exc.path)
            in_generation = path.is_relative_to(directory) and path.relative_to(directory).parts[0].startswith("gen-")
            if path.is_file() and not in_generation and path.name != MANIFEST:
                notes.append(set_aside(directory, path, exc.reason))  # a build record, a journal, a Lite file
            else:  # the manifest or a generation's file: the committed index is unusable
                notes += _set_aside_index(directory, f"has a damaged file, {path}: {exc.reason}", exc)
        except Exception as exc:  # the committed index cannot be opened to finish its update
            if isinstance(exc, RevsearchError) and not isinstance(exc, IndexNotFoundError):
                raise  # busy, disk full, a server out of reach: nothing damaged
            notes += _set_aside_index(directory, f"cannot be opened: {type(exc).__name__}: {exc}", exc)


def _set_aside_index(directory: Path, reason: str, error: Exception) -> list[str]:
    """Move the committed index's records and generations aside (``error`` is raised if there are none)."""
    parts = [directory / n for n in (MANIFEST, PENDING, JOURNAL) if (directory / n).exists()]
    parts += sorted(directory.glob("gen-*"))
    if not parts:
        raise error
    return [set_aside(directory, part, f"the index {reason}") for part in parts]


def _lite_path(kind: str, options: dict, directory: Path) -> Path | None:
    """The Milvus Lite file a build of ``kind`` writes, if any."""
    uri = options.get("uri") or str(directory / DEFAULT_URI)
    return Path(os.path.abspath(uri)) if kind == "milvus" and is_lite_uri(uri) else None


@contextmanager
def _lite_space(backend, n_vectors: int) -> Iterator[None]:
    """Refuse, before writing, ``n_vectors`` more vectors in a Milvus Lite file whose disk cannot take them;
    a Lite write that failed on a full disk (after Lite's retries) says so. ``backend`` None: no check."""
    uri = backend.config().get("uri", "") if backend is not None and backend.kind == "milvus" else ""
    if not (uri and is_lite_uri(uri)):
        yield
        return
    folder = Path(uri).parent
    check_space(folder, n_vectors * backend.dim * LITE_BYTES_PER_FLOAT + LITE_MARGIN)
    try:
        yield
    except Exception:
        if shutil.disk_usage(folder).free < LITE_MARGIN:
            raise disk_full(folder) from None
        raise


def _record_pending(
    directory: Path, generation: int, previous: dict | None, backend: str, options: dict, regions: bool
) -> None:
    """Name the new generation's Milvus collection (if any) and record the build as pending before
    the store is touched, with the previous index's collection (if any) to drop once it commits; each
    with ``regions``: whether a collection of region entries goes with it (see :func:`_create_regions`)."""

    def place(config: dict, regions: bool) -> dict:
        db_name = config.get("db_name", "")
        return {"collection": config["collection"], "uri": config["uri"], "db_name": db_name, "regions": regions}

    new = None
    if backend == "milvus":
        base = options.get("collection") or collection_name(Path(directory).resolve().name)
        options["collection"] = f"{base}_g{generation}"
        uri = options.get("uri") or str(directory / DEFAULT_URI)
        options["uri"] = os.path.abspath(uri) if is_lite_uri(uri) else uri
        new = place(options, regions)
    old = previous["backend"] if previous and previous["backend"]["kind"] == "milvus" else None
    old = old and place(resolve_lite_uri(directory, old), bool(previous.get("regions")))
    write_pending(directory, generation, new, old)


def _create_backend(kind: str, sample: np.ndarray, dtype: np.dtype, options: dict):
    """A new, empty vector index of ``kind`` for a build (a Milvus collection of that name is replaced)."""
    if kind == "milvus":
        return create_index(
            kind, sample, overwrite=True, **{k: v for k, v in options.items() if k not in ("n_clusters", "nprobe")}
        )
    return create_index(kind, sample, dtype, n_clusters=options.get("n_clusters"), nprobe=options.get("nprobe"))


def _create_regions(kind: str, sample: np.ndarray, options: dict) -> RegionEntries:
    """The region entries of a build: their PCA fitted on ``sample`` ``(images, entries, d)``, an empty index
    of the kind :func:`region_index_kind` gives (Milvus: the image collection's name and :data:`REGIONS_SUFFIX`)."""
    regions = RegionEntries(None)
    regions.fit(sample)
    kind = region_index_kind(kind)
    if kind == "milvus":
        options = {**options, "collection": options["collection"] + REGIONS_SUFFIX}
    regions.index = _create_backend(kind, regions.reduce(sample[:1]), np.float32, options)  # needs the dimension
    return regions
