"""FiftyOne Brain similarity backend ``revsearch``: any index kind of the core (exact, K-means IVF,
Milvus) over any features (CNN, pixel), through :mod:`revsearch.index.registry`.

Importing this module registers the backend, so afterwards::

    fob.compute_similarity(dataset, model=ExtractorModel(Embedder()), backend="revsearch",
                           index_kind="milvus", brain_key="rev")
    dataset.sort_by_similarity(sample_id, k=10, brain_key="rev")

A run is re-opened in any later process from its stored config (class path + parameters), so
only ``revsearch`` needs to be importable there. Distances and thresholds are in the run's ``metric``
(:data:`METRICS`; default and runs saved before it: squared L2); every index kind searches squared L2.

Queries on a view search only the view's samples (the view's keys are pushed down into the index),
so their results equal an exact search of the view. Least-similar queries (``reverse=True``) work on
exact and kmeans indexes, and on Milvus with ``metric="cosine"``. Several queries are averaged
(``aggregation="mean"``) or aggregated per sample (``post-mean``, ``post-min``, ``post-max``). The index
is a ``DuplicatesMixin``: ``fob.compute_near_duplicates(dataset, similarity_index=brain_key,
threshold=...)``, ``find_duplicates``, ``find_unique`` and ``duplicates_view`` run range searches in the index.

The retrieval options of :mod:`revsearch.retrieval.options` are config options, off by default:
alpha-QE (``qe_n``), alpha-DBA (``dba_n``: the store holds augmented vectors, the run keeps the DBA
graph) and the copy mode (``copy_pixels``: the run keeps each sample's thumbnail, for
:meth:`RevsearchSimilarityIndex.copy_search` and :meth:`RevsearchSimilarityIndex.copy_neighbours`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from pathlib import Path

import eta.core.utils as etau
import fiftyone.brain as fb
import fiftyone.brain.internal.core.utils as fbu
import fiftyone.core.labels as fol
import fiftyone.core.validation as fova
import numpy as np
from fiftyone.brain.similarity import DuplicatesMixin, Similarity, SimilarityConfig, SimilarityIndex

from revsearch.array_codec import decode_array
from revsearch.features.factory import make_extractor
from revsearch.features.pca import PCAReducer, l2_normalize
from revsearch.features.pipeline import FeatureExtractor
from revsearch.features.query_source import ImageQuery, load_query_image
from revsearch.fiftyone import index_cache
from revsearch.fiftyone.index_handle import IndexHandle
from revsearch.fiftyone.run_store import META_FIELD, RunStore, names_in, unpack
from revsearch.files import file_signature, stale_files
from revsearch.index.exact import ExactIndex
from revsearch.index.hits import Hit, squared_l2
from revsearch.index.registry import check_kind, collection_name
from revsearch.retrieval.options import IndexExtras, RetrievalOptions, copy_query_images
from revsearch.retrieval.query_expansion import expanded_search
from revsearch.retrieval.regions import REGION_DIM, REGIONS_SUFFIX, RegionEntries, region_index_kind

logger = logging.getLogger(__name__)

BACKEND_NAME = "revsearch"
MILVUS_MAX_K = 16384
#: Milvus Lite file used when no ``uri`` is given (overridable with the brain config / env).
DEFAULT_LITE_URI = os.path.join(os.path.expanduser("~"), ".fiftyone", "revsearch", "milvus.db")
#: ``metric`` values: the units of distances in results, ``dist_field`` and thresholds. ``cosine``
#: (1 - cos) indexes hold unit vectors (squared L2 / 2); ``dotproduct`` cannot be ranked by an L2 index.
METRICS = ("sqeuclidean", "euclidean", "cosine")
#: ``mean`` averages the queries before searching; ``post-*`` aggregate each sample's distances to them.
AGGREGATIONS = {"mean": None, "post-mean": np.nanmean, "post-min": np.nanmin, "post-max": np.nanmax}
#: A patch index's saved label ids and the sample id of each.
PATCH_KEYS = ("label_ids", "sample_ids")
#: Label types whose objects can be indexed as patches (``patches_field``).
PATCH_LABEL_TYPES = (fol.Detection, fol.Detections, fol.Polyline, fol.Polylines)


def to_metric(squared: np.ndarray | float, metric: str) -> np.ndarray | float:
    """Squared L2 distances (the index's) in ``metric``'s units."""
    return np.sqrt(squared) if metric == "euclidean" else squared / 2 if metric == "cosine" else squared


def to_squared(thresh: float, metric: str) -> float:
    """A distance in ``metric``'s units as the squared L2 radius of the index."""
    return thresh**2 if metric == "euclidean" else 2 * thresh if metric == "cosine" else thresh


class RevsearchSimilarityConfig(SimilarityConfig):
    """Configuration of a revsearch similarity index.

    Args:
        index_kind: ``milvus`` (Milvus Lite file or server), ``kmeans`` (IVF) or ``exact``; ``pixel``
            (runs made before the index core) is read as ``exact``
        metric: one of :data:`METRICS`; None (also runs saved before it): ``sqeuclidean``. With
            ``cosine``, vectors are L2-normalised when added and queried (``get_embeddings`` returns them so)
        extractor: ``describe()`` of the feature extractor (CNN or pixel), so image queries can be embedded
        collection_name, uri, db_name, index_type: Milvus options (``uri`` defaults to a Lite file)
        token: Milvus token (never stored in the database)
        n_clusters, nprobe: K-means IVF options (defaults: ~4 sqrt(N) clusters, probe 1/20)
        pca_components, whiten: reduce vectors with PCA fitted on the first vectors added
        qe_n, qe_alpha: alpha-weighted query expansion of similarity queries (``qe_n`` neighbours;
            default 0 = off, so that ``sort_by_similarity`` distances stay distances to the query
            as FiftyOne's other backends give them; 3 is the library's measured default)
        dba_n, dba_alpha: alpha-DBA: indexed vectors replaced by augmented ones (``dba_n`` neighbours;
            default 0 = off, for the same reason; ``get_embeddings`` still returns the originals)
        copy_pixels: side of the pixel thumbnails kept for the copy mode (:meth:`RevsearchSimilarityIndex.copy_search`);
            default 0 = no copy mode (the plugin's build operator turns it on)
        force_square, alpha: how the objects of ``patches_field`` were cropped (FiftyOne's patch options),
            recorded so that updates crop new objects the same way
        regions: also index each image's regions (:mod:`revsearch.features.regions`), for
            :meth:`RevsearchSimilarityIndex.region_search`; ``region_dim``: their whitened-PCA size (at most:
            :class:`~revsearch.retrieval.regions.RegionEntries` keeps at least 8 vectors per dimension)
    """

    def __init__(
        self,
        index_kind: str = "milvus",
        metric: str | None = None,
        extractor: dict | None = None,
        collection_name: str | None = None,
        uri: str | None = None,
        token: str | None = None,
        db_name: str | None = None,
        index_type: str = "FLAT",
        n_clusters: int | None = None,
        nprobe: int | None = None,
        pca_components: int | None = None,
        whiten: bool = False,
        qe_n: int = 0,
        qe_alpha: float = RetrievalOptions().qe_alpha,
        dba_n: int = 0,
        dba_alpha: float = RetrievalOptions().dba_alpha,
        copy_pixels: int = 0,
        force_square: bool = False,
        alpha: float | None = None,
        regions: bool = False,
        region_dim: int = REGION_DIM,
        **kwargs,
    ):
        index_kind = check_kind(index_kind)
        if metric not in (None, *METRICS):
            raise ValueError(f"unsupported metric {metric!r}: revsearch supports {METRICS}")
        if regions and kwargs.get("patches_field") is not None:
            raise ValueError("regions are indexed per image: they cannot be combined with patches_field")
        if kwargs.get("patches_field") is not None and copy_pixels:
            raise ValueError("the copy mode (copy_pixels) compares whole images: it cannot index patches_field")
        if index_kind == "milvus":
            from revsearch.index.milvus import INDEX_TYPES

            if index_type not in INDEX_TYPES:
                raise ValueError(f"index_type must be one of {sorted(INDEX_TYPES)}, got {index_type!r}")
        super().__init__(**kwargs)
        self.index_kind, self.metric, self.extractor = index_kind, metric or "sqeuclidean", extractor
        self.collection_name, self.uri, self.db_name = collection_name, uri, db_name
        self.index_type, self.n_clusters, self.nprobe = index_type, n_clusters, nprobe
        self.pca_components, self.whiten = pca_components, whiten
        RetrievalOptions(qe_n, qe_alpha, dba_n, dba_alpha, copy_pixels)  # validates
        self.qe_n, self.qe_alpha = qe_n, qe_alpha
        self.dba_n, self.dba_alpha, self.copy_pixels = dba_n, dba_alpha, copy_pixels
        self.force_square, self.alpha = force_square, alpha
        self.regions, self.region_dim = bool(regions), int(region_dim)
        self._token = token

    @property
    def method(self) -> str:
        return BACKEND_NAME

    @property
    def options(self) -> RetrievalOptions:
        """The retrieval options of the run (those of runs made before them: all off)."""
        return RetrievalOptions(self.qe_n, self.qe_alpha, self.dba_n, self.dba_alpha, self.copy_pixels)

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value

    @property
    def max_k(self) -> int | None:
        return MILVUS_MAX_K if self.index_kind == "milvus" else None

    @property
    def supports_least_similarity(self) -> bool:
        """Exact and IVF indexes rank farthest first; Milvus only with unit vectors (cosine), by the
        nearest to the negated query."""
        return self.index_kind != "milvus" or self.metric == "cosine"

    @property
    def supported_aggregations(self) -> tuple:
        return tuple(AGGREGATIONS)

    def load_credentials(self, token: str | None = None, uri: str | None = None) -> None:
        """Token from the argument or brain config; ``uri`` only if the run stored none."""
        params = fb.brain_config.similarity_backends.get(BACKEND_NAME, {})
        self._token = token or self._token or params.get("token")
        self.uri = self.uri or uri or params.get("uri")


class RevsearchSimilarity(Similarity):
    """Factory of :class:`RevsearchSimilarityIndex` (FiftyOne finds it by the config's name)."""

    def initialize(self, samples, brain_key):
        field = self.config.patches_field
        if field is not None:
            try:
                fova.validate_collection_label_fields(samples, field, PATCH_LABEL_TYPES)
            except ValueError as e:
                kinds = ", ".join(t.__name__ for t in PATCH_LABEL_TYPES)
                raise ValueError(f"patches_field {field!r} must be a label field of type {kinds}: {e}") from None
        return RevsearchSimilarityIndex(samples, self.config, brain_key, backend=self)

    def register_run(self, samples, key, overwrite=True, cleanup=True):
        """Check the key now, register the run when its results are first saved: a ``compute_similarity``
        that fails on the way (adding the vectors) leaves no run behind."""
        if key is not None:
            self.validate_run(samples, key, overwrite=overwrite)
            self.pending = (samples, key, overwrite, cleanup)

    def cleanup(self, samples, key):
        """Drop the vectors (Milvus collection) when the brain run is deleted, and the stored arrays
        that no other run (e.g. of a clone) lists."""
        RunStore.delete(samples, key, lambda: samples.load_brain_results(key, cache=False).cleanup())

    @classmethod
    def save_run_results(cls, samples, key, run_results, overwrite=True, cache=True):
        """FiftyOne's save (``results.save()`` and ``compute_similarity`` call it), the results' arrays
        stored first (:meth:`RunStore.save`); an in-memory index is then kept for this process."""
        save = super().save_run_results
        backend = getattr(run_results, "_backend", None)
        pending = getattr(backend, "pending", None)
        if pending and key is not None and pending[1] == key:
            Similarity.register_run(backend, *pending)
            backend.pending = None
        if key is None or run_results is None:
            return save(samples, key, run_results, overwrite=overwrite, cache=cache)
        run_results._run.save(samples, key, lambda: save(samples, key, run_results, overwrite=overwrite, cache=cache))
        if run_results._handle.kind != "milvus":
            index_cache.remember(samples, key, run_results._handle)


def _fill_milvus_defaults(config: RevsearchSimilarityConfig, dataset_name: str, brain_key: str | None) -> bool:
    """Give a Milvus index its default Lite file and collection name; True if anything was set."""
    if config.index_kind != "milvus" or (config.uri and config.collection_name):
        return False
    config.uri = config.uri or DEFAULT_LITE_URI
    config.collection_name = config.collection_name or collection_name(dataset_name, brain_key or "index")
    return True


def _make_handle(config: RevsearchSimilarityConfig, state: dict, suffix: str = "") -> IndexHandle:
    """The run's index: its stored ``state``, made (when first added to) with the config's options;
    ``suffix``: of the Milvus collection of a second index of the run, its regions (kept in an index of
    :func:`region_index_kind`, or of the kind its stored ``state`` names)."""
    if config.index_kind != "milvus":
        kind = (state.get("kind") or region_index_kind(config.index_kind)) if suffix else config.index_kind
        return IndexHandle({**state, "kind": kind}, {"n_clusters": config.n_clusters, "nprobe": config.nprobe})
    uri = os.path.expanduser(config.uri)
    if uri.endswith(".db"):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return IndexHandle(
        {**state, "kind": "milvus"},
        {
            "collection": config.collection_name + suffix,
            "uri": uri,
            "token": config.token or "",
            "db_name": config.db_name or "",
            "index_type": config.index_type,
        },
    )


class RevsearchSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """A revsearch index over a dataset's samples, keyed by sample id."""

    def __init__(
        self,
        samples,
        config,
        brain_key,
        state: dict | None = None,
        pca: PCAReducer | None = None,
        backend=None,
        signatures: dict | None = None,
        retrieval_state: dict | None = None,
        patch_state: dict | None = None,
        added_state: dict | None = None,
        region_state: dict | None = None,
    ):
        self._pca = pca
        self._added = ExactIndex.from_state(unpack(added_state)) if added_state else None
        self._ids: np.ndarray | None = None
        owners = {k: decode_array(v) for k, v in unpack(patch_state or {}).items()}
        #: patch indexes: label id (the index key) -> id of the sample holding the label
        self._owners: dict[str, str] = dict(zip(*(owners.get(k, np.empty(0, str)).tolist() for k in PATCH_KEYS)))
        self._signatures: dict[str, list[float]] = dict(signatures or {})
        saved = (
            {
                "index_state": state,
                "retrieval_state": retrieval_state,
                "patch_state": patch_state,
                "added_state": added_state,
                "region_state": region_state,
            }
            if state is not None
            else None
        )
        self._run = RunStore(self._array_states, saved)
        filled = _fill_milvus_defaults(config, samples._root_dataset.name, brain_key)
        if state and config.index_kind != "milvus" and brain_key is not None:  # loaded: kept per process
            self._handle = index_cache.load(samples, brain_key, lambda: _make_handle(config, unpack(state)))
        else:
            self._handle = _make_handle(config, unpack(state or {}))
        self._extras = IndexExtras.from_state(unpack(retrieval_state), config.options, self._handle.dim or 0)
        regions = unpack(region_state or {})
        self._regions: RegionEntries | None = None
        if config.regions:
            pca = PCAReducer.from_state(regions["pca"]) if regions.get("pca") else None
            handle = _make_handle(config, regions.get("index") or {}, REGIONS_SUFFIX)
            self._regions = RegionEntries(handle, pca, regions.get("per_image") or 0, config.region_dim)
        SimilarityIndex.__init__(self, samples, config, brain_key, backend=backend)
        DuplicatesMixin.__init__(self)
        if filled and brain_key is not None and not getattr(backend, "pending", None):
            self.save_config()  # (a run not registered yet is registered with this config)
        if filled and getattr(backend, "pending", None):
            # a new run's default-named collection can only hold what a failed compute_similarity left
            self._handle.options["overwrite"] = True

    # ---- sizes and ids -------------------------------------------------------------------
    @property
    def has_patches(self) -> bool:
        """Whether the index holds labels' patches (keyed by label id) rather than whole samples."""
        return self.config.patches_field is not None

    @property
    def keys(self) -> np.ndarray:
        """The index's keys: sample ids, or label ids for a patch index."""
        if self._ids is None:
            self._ids = np.array(self._handle.keys(), dtype=str)
        return self._ids

    @property
    def sample_ids(self) -> np.ndarray:
        """The sample of each indexed vector (patch index: the sample holding each label)."""
        return self._owner_ids(self.keys) if self.has_patches else self.keys

    @property
    def label_ids(self) -> np.ndarray | None:
        return self.keys if self.has_patches else None

    def _owner_ids(self, keys) -> np.ndarray:
        return np.array([self._owners[k] for k in keys], dtype=str)

    @property
    def current_keys(self) -> np.ndarray:
        """The keys of the current view's indexed samples (label ids for a patch index)."""
        return self.current_label_ids if self.has_patches else self.current_sample_ids

    @property
    def total_index_size(self) -> int:
        """The store's count (Milvus: its entity count; no keys are read)."""
        return len(self._handle) if self._ids is None else len(self._ids)

    @property
    def pca(self) -> PCAReducer | None:
        return self._pca

    def set_pca(self, pca: PCAReducer | None) -> None:
        """Use a PCA fitted elsewhere (for vectors that are already reduced); None keeps the current one."""
        if pca is not None:
            self._pca = pca

    # ---- updates -------------------------------------------------------------------------
    def _reduce(self, vectors: np.ndarray, fit: bool = False) -> np.ndarray:
        """(n, d) vectors in index space: the index's PCA (fitted here on the first vectors if
        configured), then unit length for ``cosine``."""
        vectors = np.asarray(vectors)
        if self._pca is None and fit and self.config.pca_components:
            self._pca = PCAReducer.fit(vectors, self.config.pca_components, self.config.whiten)
        if self._pca is not None and vectors.shape[-1] == self._pca.input_dim:
            vectors = self._pca.transform(vectors.reshape(-1, self._pca.input_dim))
        return self._unit(vectors)

    def _unit(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalize(vectors) if self.config.metric == "cosine" else vectors

    def add_to_index(
        self,
        embeddings,
        sample_ids,
        label_ids=None,
        overwrite=True,
        allow_existing=True,
        warn_existing=False,
        reload=True,
    ):
        ids, owners = self._keys_of(sample_ids, label_ids)
        embeddings = np.asarray(embeddings)
        vectors = self._reduce(embeddings, fit=True)
        existing = self._handle.contains(ids) if (warn_existing or not overwrite) else set()
        if existing and not allow_existing and not overwrite:
            raise ValueError(f"{len(existing)} IDs (eg {next(iter(existing))}) already exist in the index")
        if existing and warn_existing:
            logger.warning(
                "%s %d IDs that already exist in the index", "Overwriting" if overwrite else "Skipping", len(existing)
            )
        if existing and not overwrite:
            keep = [i for i, _id in enumerate(ids) if _id not in existing]
            ids, owners, vectors, embeddings = (
                [ids[i] for i in keep],
                [owners[i] for i in keep],
                vectors[keep],
                embeddings[keep],
            )
        if ids:
            self._changing()
            paths = self._filepaths(sorted(set(owners)))
            if self.has_patches:
                self._owners.update(zip(ids, owners))
            self._handle.add(*self._extras.store_vectors([], ids, vectors))
            self._keep_added(ids, embeddings)
            self._extras.update_pixels([], paths)
            self._record_signatures(paths)
            if self.config.embeddings_field is not None:
                fbu.add_embeddings(
                    self._samples,
                    embeddings,
                    owners,
                    ids if self.has_patches else None,
                    self.config.embeddings_field,
                    patches_field=self.config.patches_field,
                )
        self._ids = None
        if reload:
            self.reload()

    def _keys_of(self, sample_ids, label_ids) -> tuple[list[str], list[str]]:
        """The index keys of added vectors and the sample of each (the keys themselves for a sample index)."""
        owners = [str(i) for i in sample_ids]
        if not self.has_patches:
            if label_ids is not None:
                raise ValueError("This index holds whole samples, not patches: it takes no label IDs")
            return owners, owners
        if label_ids is None:
            raise ValueError(f"This index holds patches of {self.config.patches_field!r}: label IDs are needed")
        keys = [str(i) for i in label_ids]
        if len(keys) != len(owners):
            raise ValueError(f"{len(keys)} label IDs for {len(owners)} sample IDs")
        return keys, owners

    def _filepaths(self, ids: list[str]) -> dict[str, str]:
        """Sample id -> file path for ``ids`` (one query; a full scan when asked for many)."""
        dataset = self._samples._root_dataset
        source = dataset.select(ids) if len(ids) <= 10_000 else dataset
        wanted = set(ids)
        return {i: p for i, p in zip(*source.values(["id", "filepath"])) if i in wanted}

    def _record_signatures(self, paths: dict[str, str]) -> None:
        """Remember (size, mtime) of each sample's file ({id: path}), to detect files changed after indexing."""
        for sample_id, path in paths.items():
            signature = file_signature(path)
            if signature is not None:
                self._signatures[sample_id] = signature

    def changed_sample_ids(self) -> list[str]:
        """Indexed samples whose file is missing or differs (size or mtime) from when it was indexed."""
        indexed = set(self.sample_ids.tolist())
        recorded = {i: sig for i, sig in self._signatures.items() if i in indexed}
        stale = stale_files((i, path, recorded[i]) for i, path in self._filepaths(list(recorded)).items())
        return stale["missing"] + stale["changed"]

    @property
    def file_signatures(self) -> dict[str, list[float]]:
        return self._signatures

    def remove_from_index(self, sample_ids=None, label_ids=None, allow_missing=True, warn_missing=False, reload=True):
        ids = self._keys_to_remove(sample_ids, label_ids)
        missing = set(ids) - self._handle.contains(ids) if (warn_missing or not allow_missing) else set()
        if missing and not allow_missing:
            raise ValueError(f"{len(missing)} IDs (eg {next(iter(missing))}) are not in the index")
        if missing and warn_missing:
            logger.warning("Ignoring %d IDs that are not in the index", len(missing))
        present = [i for i in ids if i not in missing]
        if present:
            self._changing()
            self._handle.remove(present)
            keys, vectors = self._extras.store_vectors(present, [], np.empty((0, self._handle.dim or 0), np.float32))
            if keys:  # DBA: the augmented vectors that had a removed neighbour
                self._handle.add(keys, vectors)
            self._extras.update_pixels(present, {})
            if self._added is not None:
                self._added.remove([k for k in present if k in self._added.store])
            still_there = self._present(set(present)) if self.config.embeddings_field is not None else set()
            removed_owners = {self._owners.pop(k) for k in present} if self.has_patches else set(present)
            if self._regions is not None:
                self._regions.remove(present)
            for sample_id in removed_owners - set(self._owners.values()):
                self._signatures.pop(sample_id, None)
            if still_there:  # (the field of samples or labels deleted from the dataset went with them)
                cleared = [k for k in present if k in still_there]
                fbu.remove_embeddings(
                    self._samples,
                    self.config.embeddings_field,
                    sample_ids=None if self.has_patches else cleared,
                    label_ids=cleared if self.has_patches else None,
                    patches_field=self.config.patches_field,
                )
        self._ids = None
        if reload:
            self.reload()

    def _keys_to_remove(self, sample_ids, label_ids) -> list[str]:
        """Keys named by ``label_ids`` and, for a patch index, every patch of the ``sample_ids``."""
        as_list = lambda ids: [str(i) for i in ([ids] if isinstance(ids, str) else ids or [])]  # noqa: E731
        if not self.has_patches:
            if label_ids is not None:
                raise ValueError("This index holds whole samples, not patches: it takes no label IDs")
            return as_list(sample_ids)
        samples = set(as_list(sample_ids))
        return as_list(label_ids) + [k for k, owner in self._owners.items() if owner in samples]

    def get_embeddings(self, sample_ids=None, label_ids=None, allow_missing=True, warn_missing=False):
        """The vectors as they were added (before the run's PCA or ``cosine`` normalisation; the augmented
        ones with alpha-DBA are not returned), with their sample ids and (patch index) label ids.

        A patch index takes ``label_ids``, or ``sample_ids`` for all patches of those samples."""
        if label_ids is not None and not self.has_patches:
            raise ValueError("This index does not support label IDs")
        if self.has_patches and label_ids is None and sample_ids is not None:
            wanted_samples = {sample_ids} if isinstance(sample_ids, str) else {str(i) for i in sample_ids}
            keys = [k for k in self.keys.tolist() if self._owners[k] in wanted_samples]
        elif label_ids is None and sample_ids is None:
            keys = self.keys.tolist()
        else:
            wanted = label_ids if label_ids is not None else sample_ids
            wanted = [wanted] if isinstance(wanted, str) else [str(i) for i in wanted]
            present = self._handle.contains(wanted)
            keys = [i for i in wanted if i in present]
            if len(keys) < len(wanted) and not allow_missing:
                raise ValueError(f"{len(wanted) - len(keys)} IDs are not in the index")
            if len(keys) < len(wanted) and warn_missing:
                logger.warning("Skipping %d IDs that are not in the index", len(wanted) - len(keys))
        vectors = self._added_vectors(keys) if keys else np.empty((0, 0), np.float32)
        if not self.has_patches:
            return vectors, np.array(keys, dtype=str), None
        return vectors, self._owner_ids(keys), np.array(keys, dtype=str)

    def reduced_embeddings(self, keys: list[str]) -> np.ndarray:
        """The vectors the index searches for ``keys`` (after PCA / ``cosine`` normalisation, before DBA)."""
        return self._original_vectors(keys)

    def _keep_added(self, keys: list[str], embeddings: np.ndarray) -> None:
        """Keep what :meth:`get_embeddings` needs where the index stores other vectors: the added ones
        when the run's PCA reduces them, their lengths when ``cosine`` normalises them."""
        full = self._pca is not None and embeddings.shape[-1] == self._pca.input_dim
        if not full and self.config.metric != "cosine":
            return
        kept = embeddings if full else np.linalg.norm(embeddings, axis=1, keepdims=True)
        if self._added is None:
            self._added = ExactIndex(kept.shape[1])
        if self._added.dim == kept.shape[1]:  # (else those keys fall back to the stored vectors)
            self._added.add(keys, kept.astype(np.float32))

    def _added_vectors(self, keys: list[str]) -> np.ndarray:
        """The vectors added for ``keys`` (see :meth:`_keep_added`; runs saved before keep none)."""
        stored = self._original_vectors(keys)
        if self._added is None or not all(k in self._added.store for k in keys):
            return stored
        kept = self._added.store.vectors[self._added.store.rows_of(keys)]
        return stored * kept if self._added.dim == 1 else kept

    def _original_vectors(self, keys: list[str]) -> np.ndarray:
        """The vectors added for ``keys`` (not the DBA-augmented ones the store holds); KeyError if one is missing."""
        return self._handle.vectors(keys) if self._extras.dba is None else self._extras.dba.originals(keys)

    def reload(self):
        self._ids = None
        super().reload()

    def get_meta(self) -> dict:
        """Beside the run: the stored arrays its results refer to (see :mod:`revsearch.fiftyone.run_store`)."""
        return {**super().get_meta(), META_FIELD: names_in(self._run.packed)}

    def _changing(self) -> None:
        """The index is about to change: no longer the saved one, nor the one kept for this process."""
        self._run.changed()
        if self._handle.kind != "milvus" and self.key is not None:
            index_cache.forget(self._samples, self.key)

    def cleanup(self):
        self._changing()
        self._handle.drop()
        if self._regions is not None:
            self._regions.index.drop()
            self._regions.pca, self._regions.per_image = None, 0
        self._extras = IndexExtras(self.config.options, 0)
        self._added, self._owners, self._ids = None, {}, None

    # ---- regions -------------------------------------------------------------------------
    @property
    def has_regions(self) -> bool:
        return self._regions is not None

    def add_regions(self, sample_ids, vectors: np.ndarray) -> None:
        """Index each sample's region vectors ``(n, regions per image, dim)`` (the first: the whole image),
        reduced by a whitened PCA fitted on the first ones added."""
        if self._regions is None:
            raise ValueError(f"index {self.key!r} was built without regions (regions=True)")
        ids = [str(i) for i in sample_ids]
        if ids:
            self._changing()
            self._regions.add(ids, self._regions.reduce(vectors))

    def region_search(self, vectors: np.ndarray, k: int) -> list[tuple[str, int, float]]:
        """The ``k`` samples of the current view whose best region is nearest to any of the query's
        ``vectors`` (one per scale): (sample id, region, squared L2 distance), nearest first."""
        if self._regions is None or self._regions.pca is None:
            raise ValueError(f"index {self.key!r} holds no regions: build it with regions on")
        return self._regions.search(vectors, k, self.current_sample_ids.tolist() if self.has_view else None)

    # ---- queries -------------------------------------------------------------------------
    def embed_query(self, query: ImageQuery, allow_private_urls: bool = False) -> np.ndarray:
        """The vector of a query image (path, URL, bytes, array) with the index's extractor + PCA."""
        extractor, image = self._load_query(query, allow_private_urls)
        return self._reduce(extractor.embed_images([image]))[0]

    def _load_query(self, query: ImageQuery, allow_private_urls: bool) -> tuple[FeatureExtractor, np.ndarray]:
        """The index's feature extractor and the decoded query image."""
        if not self.config.extractor:
            raise ValueError("this index does not record its feature extractor; query by vector or sample")
        extractor = make_extractor(self.config.extractor)
        return extractor, load_query_image(query, extractor.min_side, allow_private_urls)

    @property
    def has_copy_mode(self) -> bool:
        """Whether the index keeps the thumbnails the copy mode needs."""
        return self._extras.pixels is not None

    def copy_search(self, query: ImageQuery, k: int, allow_private_urls: bool = False) -> list[Hit]:
        """Edited copies of a query image among the current view's samples: the CNN ranking fused
        with the thumbnail ranking (:meth:`~revsearch.retrieval.options.IndexExtras.copy_search`);
        distances are relative (see :func:`~revsearch.retrieval.fusion.ratio_fusion`), best first."""
        if not self.has_copy_mode:
            raise ValueError(self._no_thumbnails())
        extractor, image = self._load_query(query, allow_private_urls)
        vectors = self._reduce(extractor.embed_images(copy_query_images(image)))
        allowed = self._allowed()
        with self._handle.hold():
            return self._extras.copy_search(self.search, vectors, image, k, allowed)

    def copy_neighbours(self, k: int) -> list[list[Hit]]:
        """For every sample of the current view (``current_sample_ids`` order), its ``k`` nearest other
        samples of the view by the copy mode's fusion (stored thumbnails; relative distances)."""
        if not self.has_copy_mode:
            raise ValueError(self._no_thumbnails())
        ids = self.current_sample_ids.tolist()
        if not ids:
            return []
        with self._handle.hold():
            vectors = self._original_vectors(ids)
            return self._extras.copy_neighbours(self.search, ids, vectors, k, self._allowed())

    def _no_thumbnails(self) -> str:
        return (
            f"index {self.key!r} keeps no thumbnails for the copy mode: rebuild it with copy mode on "
            "('revsearch: build index', Copy-mode thumbnails 16; or build_index(..., copy_pixels=16))"
        )

    def _query_vectors(self, query) -> tuple[np.ndarray, bool, list[str] | None]:
        """Query vectors (in index space), whether a single query was given, and the query ids (if ids)."""
        if isinstance(query, str):
            query = [query]
            single = True
        else:
            query = np.asarray(query)
            if np.issubdtype(query.dtype, np.number):
                single = query.ndim == 1
                return self._reduce(query.reshape(-1, query.shape[-1])), single, None
            query, single = [str(q) for q in query], False
        try:
            return self._original_vectors(query), single, query
        except KeyError:
            missing = sorted(set(query) - self._handle.contains(query))
            raise ValueError(f"Query IDs {missing} are not in the index") from None

    def _allowed(self) -> np.ndarray | None:
        """The keys a query may return: the current view's indexed samples (or patches), or None for all."""
        return self.current_keys if self.has_view else None

    def search(self, vectors: np.ndarray, k: int | None, reverse: bool = False) -> list[list[Hit]]:
        """Nearest (``reverse``: farthest) indexed samples of the current view for each vector
        (squared L2, ascending; descending if ``reverse``). Samples (labels) deleted from the dataset
        since they were indexed are never returned: a search that hits one searches again without them."""
        hits = self._search(vectors, k, reverse, self._allowed())
        if self.has_view:
            return hits
        found = {h.key for row in hits for h in row}
        if found <= self._present(found):
            return hits
        return self._search(vectors, k, reverse, self._present(set(self.keys.tolist())))

    def _present(self, keys: set[str]) -> set[str]:
        """Those of ``keys`` whose sample (label) is still in the dataset."""
        dataset = self._samples._root_dataset
        owners = sorted({self._owners[k] for k in keys} if self.has_patches else keys)
        if not self.has_patches:
            return set(dataset.select(owners).values("id"))
        return keys & set(dataset.select(owners).values(self._label_id_path(), unwind=True))

    def _label_id_path(self) -> str:
        """The path of the patches field's label ids (``<field>.detections.id`` for detections)."""
        field = self.config.patches_field
        kind = self._samples._root_dataset.get_field(field).document_type
        lists = {fol.Detections: "detections", fol.Polylines: "polylines"}
        return f"{field}.{lists[kind]}.id" if kind in lists else f"{field}.id"

    def _search(self, vectors: np.ndarray, k: int | None, reverse: bool, allowed) -> list[list[Hit]]:
        total = self.total_index_size if allowed is None else len(allowed)
        if not total:
            return [[] for _ in range(len(vectors))]
        limit = min(total, self.config.max_k or total)
        k = min(k or limit, limit)
        if reverse and self._handle.kind == "milvus" and self.config.metric == "cosine":
            # unit vectors: the farthest from q are the nearest to -q, and |q - x|^2 = 4 - |-q - x|^2
            hits = self._handle.search(-vectors, k, allowed=allowed)
            return [[Hit(h.key, max(4.0 - h.distance, 0.0)) for h in row] for row in hits]
        return self._handle.search(vectors, k, allowed=allowed, reverse=reverse)

    def _kneighbors(self, query=None, k=None, reverse=False, aggregation=None, return_dists=False):
        if aggregation is not None and aggregation not in AGGREGATIONS:
            raise ValueError(f"Unsupported aggregation {aggregation!r}; supported: {tuple(AGGREGATIONS)}")
        if query is None:
            if aggregation is not None:
                raise ValueError("Full index queries do not support aggregation")
            return self._full_index_neighbours(k or 1, return_dists)
        with self._handle.hold():
            vectors, single, query_ids = self._query_vectors(query)
            if aggregation not in (None, "mean"):
                keys, dists = self._post_aggregate(vectors, query_ids, k, reverse, aggregation)
                return self._columns([keys], [dists], True, return_dists)
            if aggregation == "mean":  # the mean of the vectors as added (cosine: before normalising)
                added = self._added_vectors(query_ids) if query_ids is not None else vectors
                vectors, single = self._reduce(added.mean(axis=0, keepdims=True)), True
            if reverse and not self.config.supports_least_similarity:
                raise ValueError(
                    "Milvus searches for nearest neighbours only: least-similar queries (reverse=True) "
                    "need metric='cosine' or an exact or kmeans index"
                )
            if reverse or not self.config.qe_n:
                hits = self.search(vectors, k, reverse=reverse)
            else:  # alpha-QE with the view's own vectors
                hits = expanded_search(
                    self.search, self._handle.vectors, vectors, k, self.config.qe_n, self.config.qe_alpha
                )
        return self._hit_columns(hits, single, return_dists)

    def _hit_columns(self, hits: list[list[Hit]], single: bool, return_dists: bool) -> tuple:
        """:meth:`_columns` of each query's hits, distances in the run's metric."""
        keys = [[h.key for h in row] for row in hits]
        dists = [[float(to_metric(h.distance, self.config.metric)) for h in row] for row in hits]
        return self._columns(keys, dists, single, return_dists)

    def _columns(self, keys: list[list[str]], dists: list[list[float]], single: bool, return_dists: bool) -> tuple:
        """``(sample_ids, label_ids[, dists])`` of each query's keys (the first query's if ``single``), as
        ``_kneighbors`` returns them; label ids None for a sample index."""
        sample_ids = [self._owner_ids(row).tolist() for row in keys] if self.has_patches else keys
        label_ids = keys if self.has_patches else None
        if single:
            sample_ids, label_ids, dists = sample_ids[0], label_ids[0] if label_ids else None, dists[0]
        return (sample_ids, label_ids, dists) if return_dists else (sample_ids, label_ids)

    def _post_aggregate(
        self, vectors: np.ndarray, query_ids: list[str] | None, k: int | None, reverse: bool, aggregation: str
    ) -> tuple[list[str], list[float]]:
        """``post-*`` aggregation, as fob's sklearn backend: each query's distance to each sample of the
        view, aggregated per sample ignoring NaN (a query sample's distance to itself is NaN; a sample
        left without distances gets 0), sorted. Exact on every kind: reads the view's vectors and
        computes n_queries x n_view distances (time and memory grow with the view)."""
        ids = self.current_keys
        if not len(ids):
            return [], []
        stored = self._handle.vectors(ids.tolist()).astype(np.float64)
        squared = squared_l2(vectors.astype(np.float64), stored, np.einsum("ij,ij->i", stored, stored))
        dists = to_metric(squared, self.config.metric)
        if query_ids is not None:
            dists[np.asarray(query_ids)[:, None] == ids[None, :]] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            dists = np.nan_to_num(AGGREGATIONS[aggregation](dists, axis=0))
        order = np.argsort(dists, kind="stable")
        order = (order[::-1] if reverse else order)[:k]
        return ids[order].tolist(), dists[order].tolist()

    def _full_index_neighbours(self, k: int, return_dists: bool):
        """The ``k`` nearest other samples (patches) of every one of the view, as indexes into
        :attr:`current_keys` (as fob's sklearn backend returns them). Exact on every kind: the
        view's keys are always pushed down, which makes the IVF search exact."""
        ids = self.current_keys
        position = {key: i for i, key in enumerate(ids.tolist())}
        with self._handle.hold():
            vectors = self._handle.vectors(ids.tolist()) if len(ids) else np.empty((0, 0), np.float32)
            hits = self._handle.search(vectors, k + 1, allowed=ids) if len(ids) else []
        rows = [[h for h in row if h.key != key][:k] for key, row in zip(ids.tolist(), hits)]
        inds = [np.array([position[h.key] for h in row], dtype=np.int64) for row in rows]
        dists = [to_metric(np.array([h.distance for h in row]), self.config.metric) for row in rows]
        return (inds, dists) if return_dists else inds

    def find_duplicates(self, thresh=None, fraction=None):
        """FiftyOne's ``DuplicatesMixin.find_duplicates``, except that each duplicate's nearest kept
        sample (patch) is searched with the kept keys pushed down into the index, not through a view
        selecting them: at about 1M samples that view's query exceeds MongoDB's 16 MB command limit."""
        keys = self.current_keys.tolist()
        if fraction is not None:
            keep = int(round(min(max(0, 1.0 - fraction), 1) * len(keys)))
            unique, thresh = self._remove_duplicates_count(keep, keys, init_thresh=thresh)
        else:
            unique = self._remove_duplicates_thresh(thresh, keys)
        kept = set(unique)
        duplicates = [key for key in keys if key not in kept]
        neighbours = defaultdict(list)
        if unique and duplicates:
            with self._handle.hold():
                hits = self._handle.search(self._original_vectors(duplicates), 1, allowed=unique)
            for key, row in zip(duplicates, hits):
                neighbours[row[0].key].append((key, float(to_metric(row[0].distance, self.config.metric))))
        self._thresh, self._unique_ids, self._duplicate_ids = thresh, unique, duplicates
        self._neighbors_map = {key: sorted(found, key=lambda t: t[1]) for key, found in neighbours.items()}

    def _radius_neighbors(self, query=None, thresh=None, return_dists=False):
        """Indexed samples of the view within distance ``thresh`` (in the run's metric; a range search
        in the index, in squared L2).

        ``query=None``: for every sample (patch) of the view, integer indexes into :attr:`current_keys`
        (itself included), as fob's ``DuplicatesMixin`` expects; else ids as for :meth:`_kneighbors`.
        """
        if thresh is None:
            raise ValueError(f"a distance threshold ({self.config.metric}) is needed")
        radius = float(to_squared(float(thresh), self.config.metric))
        with self._handle.hold():
            if query is None:
                ids = self.current_keys.tolist()
                vectors = self._handle.vectors(ids) if ids else np.empty((0, 0), np.float32)
                hits = self._handle.range_search(vectors, radius, allowed=self._allowed()) if ids else []
                position = {key: i for i, key in enumerate(ids)}
                inds = [np.array([position[h.key] for h in row], dtype=np.int64) for row in hits]
                dists = [to_metric(np.array([h.distance for h in row]), self.config.metric) for row in hits]
                return (inds, dists) if return_dists else inds
            vectors, single, _ = self._query_vectors(query)
            hits = self._handle.range_search(vectors, radius, allowed=self._allowed())
        return self._hit_columns(hits, single, return_dists)

    # ---- persistence (pure: arrays are stored by a save only, see RunStore) ----------------
    @property
    def index_state(self) -> dict:
        """The index (in-memory kinds: keys, vectors, lists), large arrays as references (:class:`RunStore`)."""
        return self._run.packed["index_state"]

    def _array_states(self) -> dict:
        """What :class:`RunStore` stores: the index and the retrieval extras (arrays as they are)."""
        keys = list(self._owners)
        return {
            "index_state": self._handle.arrays_state(),
            "retrieval_state": self._extras.arrays_state(),
            "patch_state": dict(zip(PATCH_KEYS, (np.array(keys, str), self._owner_ids(keys)))) if keys else {},
            "added_state": self._added.arrays_state() if self._added is not None else {},
            "region_state": self._region_arrays(),
        }

    def _region_arrays(self) -> dict:
        regions = self._regions
        if regions is None or regions.pca is None:
            return {}
        return {"index": regions.index.arrays_state(), "pca": regions.pca.state(), "per_image": regions.per_image}

    @property
    def pca_state(self) -> dict | None:
        return self._pca.state() if self._pca is not None else None

    def attributes(self) -> list[str]:
        return super().attributes() + [
            "index_state",
            "pca_state",
            "file_signatures",
            "retrieval_state",
            "index_metric",
            "patch_state",
            "added_state",
            "region_state",
        ]

    @property
    def index_metric(self) -> str:
        """The metric the vectors were indexed for, saved with them (a run saved before has none)."""
        return self.config.metric

    @property
    def patch_state(self) -> dict:
        """Patch index: the sample holding each indexed label (label ids, sample ids), like :attr:`index_state`."""
        return self._run.packed["patch_state"]

    @property
    def region_state(self) -> dict:
        """The region index (in-memory kinds: whole), its PCA and regions per image, like :attr:`index_state`."""
        return self._run.packed["region_state"]

    @property
    def added_state(self) -> dict:
        """What :meth:`get_embeddings` needs beside the index (see :meth:`_keep_added`), like :attr:`index_state`."""
        return self._run.packed["added_state"]

    @property
    def retrieval_state(self) -> dict:
        """The DBA graph and copy-mode thumbnails (empty when the options are off), like :attr:`index_state`."""
        return self._run.packed["retrieval_state"]

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        pca = PCAReducer.from_state(d["pca_state"]) if d.get("pca_state") else None
        # runs saved before metrics were honoured searched squared L2, whatever ``metric`` they stored
        config.metric = d.get("index_metric") or "sqeuclidean"
        return cls(
            samples,
            config,
            brain_key,
            state=d.get("index_state"),
            pca=pca,
            signatures=d.get("file_signatures"),
            retrieval_state=d.get("retrieval_state"),
            patch_state=d.get("patch_state"),
            added_state=d.get("added_state"),
            region_state=d.get("region_state"),
        )


def register(name: str = BACKEND_NAME) -> None:
    """Make ``backend=name`` available to ``fob.compute_similarity`` in this process."""
    fb.brain_config.similarity_backends.setdefault(name, {})["config_cls"] = etau.get_class_name(
        RevsearchSimilarityConfig
    )


register()
