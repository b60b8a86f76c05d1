"""revsearch on FiftyOne datasets: embeddings fields, PCA, K-means clusters, indexes, queries.

Each function works on a sample collection and is what the plugin's operators call.
"""

from __future__ import annotations

from collections.abc import Callable

import fiftyone.brain as fob
import fiftyone.core.models as fom
import fiftyone.core.patches as fop
import numpy as np

from revsearch.features.factory import REGIONS_NEED_CNN, make_extractor
from revsearch.features.pca import PCAReducer
from revsearch.features.pipeline import FeatureExtractor
from revsearch.features.query_source import ImageQuery
from revsearch.features.regions import whole_image
from revsearch.fiftyone.brain import BACKEND_NAME, PATCH_LABEL_TYPES, RevsearchSimilarityIndex
from revsearch.fiftyone.patches import embed_patches, labelled_samples
from revsearch.index.ivf import IVFIndex
from revsearch.index.registry import LEGACY_PIXEL, check_kind
from revsearch.retrieval.options import MODES

#: Field ``info`` keys recording how an embeddings field was made.
EXTRACTOR_INFO, PCA_INFO = "revsearch_extractor", "revsearch_pca"
#: Samples whose image could not be read get this tag and the reason in this string field.
FAILED_TAG, ERROR_FIELD = "revsearch:failed", "revsearch_error"
Progress = Callable[[float, str], None] | None


class ExtractorModel(fom.Model, fom.EmbeddingsMixin):
    """A revsearch feature extractor usable as a FiftyOne model (``compute_embeddings`` etc.)."""

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @property
    def has_embeddings(self) -> bool:
        return True

    def embed(self, arg: np.ndarray) -> np.ndarray:
        return self.embed_all([arg])[0]

    def embed_all(self, args) -> np.ndarray:
        return self.extractor.embed_images(list(args))

    def predict(self, arg: np.ndarray) -> np.ndarray:
        return self.embed(arg)

    def predict_all(self, args) -> np.ndarray:
        return self.embed_all(args)


def embed_samples(
    samples, extractor: FeatureExtractor, progress: Progress = None
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Embed the samples' image files: ids and vectors of those decoded, a reason per failure (failed
    samples are marked in the dataset, see :func:`mark_failures`)."""
    ids, paths = samples.values("id"), samples.values("filepath")
    done_ids, vectors, failures, done = [], [], {}, 0
    for batch in extractor.iter_batches(paths, progress=False):
        done_ids.extend(ids[i] for i in batch.indices)
        vectors.append(batch.vectors)
        failures.update({ids[i]: reason for i, reason in batch.failures.items()})
        done += len(batch.indices) + len(batch.failures)
        if progress:
            progress(done / max(len(paths), 1), f"embedded {done}/{len(paths)} images")
    stacked = np.concatenate(vectors) if vectors else extractor.no_vectors()
    mark_failures(samples, done_ids, failures)
    return done_ids, stacked, failures


def mark_failures(samples, ok_ids: list[str], failures: dict[str, str]) -> None:
    """Tag the samples whose image failed (``revsearch:failed``) and store why in ``revsearch_error``;
    samples in ``ok_ids`` that carried the mark from an earlier run (file since fixed) lose it."""
    dataset = samples._root_dataset
    ok = set(ok_ids)
    recovered = [i for i in samples.match_tags(FAILED_TAG).values("id") if i in ok]
    if recovered:
        view = dataset.select(recovered)
        view.untag_samples(FAILED_TAG)
        view.set_values(ERROR_FIELD, [None] * len(recovered))
    if failures:
        dataset.select(list(failures)).tag_samples(FAILED_TAG)
        dataset.set_values(ERROR_FIELD, failures, key_field="id")


def _field_info(samples, field: str) -> dict:
    return samples._dataset.get_field(field).info or {}


def set_field_info(samples, field: str, info: dict) -> None:
    """Add ``info`` to the sample field's ``info``."""
    f = samples._dataset.get_field(field)
    f.info = {**(f.info or {}), **info}
    f.save()


def compute_embeddings(samples, field: str, extractor: FeatureExtractor, progress: Progress = None) -> dict[str, str]:
    """Store each sample's vector in ``field`` (extractor recorded in the field's info); failures."""
    ids, vectors, failures = embed_samples(samples, extractor, progress)
    _store_vectors(samples, field, ids, vectors, extractor.describe())
    return failures


def _store_vectors(samples, field: str, ids: list[str], vectors: np.ndarray, description: dict) -> None:
    """Vectors into a sample field, with the extractor that made them in the field's info."""
    samples.set_values(field, dict(zip(ids, vectors)), key_field="id")
    set_field_info(samples, field, {EXTRACTOR_INFO: description})


def field_vectors(samples, field: str) -> tuple[list[str], np.ndarray]:
    """Ids and vectors of the samples that have ``field`` set."""
    if not samples.has_field(field):
        raise ValueError(f"the dataset has no embeddings field {field!r}: compute embeddings first")
    view = samples.exists(field)
    ids, values = view.values("id"), view.values(field)
    if not ids:
        raise ValueError(f"no sample in this view has embeddings in field {field!r}")
    return ids, np.stack([np.asarray(v) for v in values])


def fit_pca(samples, field: str, out_field: str, n_components: int, whiten: bool = False) -> list[float]:
    """Fit PCA on ``field``, store reduced unit vectors in ``out_field``; explained variance ratios."""
    ids, vectors = field_vectors(samples, field)
    pca = PCAReducer.fit(vectors, n_components, whiten)
    samples.set_values(out_field, dict(zip(ids, pca.transform(vectors))), key_field="id")
    set_field_info(
        samples, out_field, {EXTRACTOR_INFO: _field_info(samples, field).get(EXTRACTOR_INFO), PCA_INFO: pca.state()}
    )
    total_var = float(np.var(vectors, axis=0).sum() * len(vectors) / max(len(vectors) - 1, 1))
    return (pca.explained_variance / total_var).tolist()


def fit_kmeans(samples, field: str, n_clusters: int, cluster_field: str, distance_field: str) -> list[int]:
    """K-means on ``field``; each sample's cluster id and distance to its centre go in sample fields.
    Returns the cluster sizes (index = cluster id)."""
    ids, vectors = field_vectors(samples, field)
    ivf = IVFIndex.fit(vectors, n_clusters)
    ivf.add(ids, vectors)
    clusters, distances = ivf.clusters_of(ids)
    samples.set_values(cluster_field, dict(zip(ids, clusters.tolist())), key_field="id")
    samples.set_values(distance_field, dict(zip(ids, distances.tolist())), key_field="id")
    return ivf.cluster_sizes().tolist()


def build_index(
    samples,
    brain_key: str,
    index_kind: str = "milvus",
    extractor: FeatureExtractor | None = None,
    embeddings_field: str | None = None,
    progress: Progress = None,
    keep_field: str | None = None,
    patches_field: str | None = None,
    force_square: bool = False,
    alpha: float | None = None,
    regions: bool = False,
    **options,
) -> tuple[RevsearchSimilarityIndex, dict[str, str]]:
    """Index the samples under ``brain_key``; returns the index and failures by sample id.

    ``index_kind``: ``exact``, ``kmeans`` or ``milvus`` (``pixel``: pixel features in an exact index).
    Vectors come from ``embeddings_field`` (made by :func:`compute_embeddings` / :func:`fit_pca`) or
    are computed with ``extractor`` (default: the CNN), then also stored in ``keep_field`` if given
    (for objects: on each label, kept up to date by later updates).
    ``patches_field``: index the objects of that label field instead (crops embedded with ``extractor``,
    boxes squared / grown by ``alpha`` as FiftyOne's ``compute_patch_embeddings``), searchable on
    patches views. ``regions``: also index each image's regions (CNN features computed now), for
    :func:`~revsearch.fiftyone.region_query.region_view`. ``options`` go to
    :class:`~revsearch.fiftyone.brain.RevsearchSimilarityConfig`.
    """
    if brain_key in samples._root_dataset.list_brain_runs():
        raise ValueError(
            f"brain key {brain_key!r} is already used on this dataset: choose another name, or delete that run first"
        )
    if index_kind == LEGACY_PIXEL:
        extractor = extractor or make_extractor("pixel")
    index_kind = check_kind(index_kind)
    pca, label_ids = None, None
    if patches_field:
        extractor = extractor or make_extractor("cnn")
        found = embed_patches(samples, patches_field, extractor, force_square, alpha, progress)
        ids, label_ids, vectors, failures = found.sample_ids, found.label_ids, found.stacked(extractor), found.failures
        description = extractor.describe()
        options = {**options, "patches_field": patches_field}
    elif embeddings_field:
        ids, vectors = field_vectors(samples, embeddings_field)
        info, failures = _field_info(samples, embeddings_field), {}
        description = info.get(EXTRACTOR_INFO)
        if info.get(PCA_INFO):
            pca = PCAReducer.from_state(info[PCA_INFO])
    else:
        extractor = region_extractor(extractor) if regions else extractor or make_extractor("cnn")
        options = {**options, "regions": True} if regions else options
        ids, vectors, failures = embed_samples(samples, extractor, progress)
        description = extractor.describe()
        if keep_field:
            _store_vectors(samples, keep_field, ids, whole_image(vectors), description)
    results = fob.compute_similarity(
        samples,
        embeddings=False,
        backend=BACKEND_NAME,
        brain_key=brain_key,
        index_kind=index_kind,
        extractor=description,
        **options,
    )
    results.set_pca(pca)
    if patches_field:  # (compute_similarity keeps its own force_square / alpha out of the config)
        results.config.force_square, results.config.alpha = force_square, alpha
        results.config.embeddings_field = keep_field  # objects' vectors kept on their labels
        results.save_config()
    if ids:
        _index_vectors(results, vectors, ids, label_ids)
    results.save()
    return results, failures


def region_extractor(extractor: FeatureExtractor | None) -> FeatureExtractor:
    """The region-pooling version of a CNN extractor (regions need CNN feature maps)."""
    from revsearch.features.cnn import Embedder
    from revsearch.features.multiscale import MultiScaleEmbedder
    from revsearch.features.regions import RegionEmbedder

    if extractor is None:
        return RegionEmbedder()
    if not isinstance(extractor, Embedder) or isinstance(extractor, MultiScaleEmbedder):
        raise ValueError(REGIONS_NEED_CNN)
    return RegionEmbedder(extractor.config)


def _index_vectors(results: RevsearchSimilarityIndex, vectors: np.ndarray, ids: list[str], label_ids=None) -> None:
    """Add vectors (with regions: the whole-image ones, and all to the region index)."""
    results.add_to_index(whole_image(vectors), ids, label_ids=label_ids)
    if vectors.ndim == 3:
        results.add_regions(ids, vectors)


def index_status(results: RevsearchSimilarityIndex, check_files: bool = True) -> dict:
    """Size of the index and how it differs from its dataset: samples added, deleted, or whose file
    changed (size or modification time) since indexing (not looked at, cheaper, without ``check_files``).
    A patch index: ``not_indexed`` are the samples holding objects not indexed, ``deleted`` the objects
    (label ids) indexed but gone."""
    dataset = results.samples._root_dataset
    if results.has_patches:
        objects = {
            box.id: i for i, _, boxes in labelled_samples(dataset, results.config.patches_field) for box in boxes
        }
        indexed_objects = set(results.label_ids.tolist())
        changed = sorted(set(results.changed_sample_ids()) & set(objects.values())) if check_files else []
        return {
            "indexed": len(indexed_objects),
            "not_indexed": sorted({objects[i] for i in objects.keys() - indexed_objects}),
            "deleted": sorted(indexed_objects - objects.keys()),
            "changed": changed,
            "stale": indexed_objects != objects.keys() or bool(changed),
        }
    indexed = set(results.sample_ids.tolist())
    current = set(dataset.values("id"))
    changed = sorted(set(results.changed_sample_ids()) & current) if check_files else []
    return {
        "indexed": len(indexed),
        "not_indexed": sorted(current - indexed),
        "deleted": sorted(indexed - current),
        "changed": changed,
        "stale": indexed != current or bool(changed),
    }


def sync_index(results: RevsearchSimilarityIndex, progress: Progress = None) -> dict:
    """Add the dataset's unindexed samples, re-embed changed ones, remove deleted ones, in place."""
    status = index_status(results)
    if results.has_patches:
        return _sync_patches(results, status, progress)
    if status["deleted"]:
        results.remove_from_index(status["deleted"])
    failures = {}
    todo_ids = status["not_indexed"] + status["changed"]
    if todo_ids:
        if not results.config.extractor:
            raise ValueError("this index does not record its extractor, so new samples cannot be embedded")
        todo = results.samples._root_dataset.select(todo_ids)
        ids, vectors, failures = embed_samples(todo, make_extractor(results.config.extractor), progress)
        broken = [i for i in status["changed"] if i in failures]
        if broken:  # a file that changed into something unreadable leaves the index
            results.remove_from_index(broken)
        if ids:
            _index_vectors(results, vectors, ids)
    results.save()
    return {
        "added": len(status["not_indexed"]) - len(set(failures) - set(status["changed"])),
        "updated": len(status["changed"]),
        "removed": len(status["deleted"]),
        "failures": failures,
    }


def object_fields(samples) -> list[str]:
    """Label fields whose objects can be indexed as patches (detections, polylines)."""
    return [
        name
        for name, f in samples.get_field_schema(embedded_doc_type=PATCH_LABEL_TYPES).items()
        if not name.startswith("_")
    ]


def _sync_patches(results: RevsearchSimilarityIndex, status: dict, progress: Progress) -> dict:
    """:func:`sync_index` of a patch index: the objects of new or changed samples embedded anew."""
    results.remove_from_index(label_ids=status["deleted"])
    todo_ids = status["not_indexed"] + status["changed"]
    failures = {}
    if todo_ids:
        todo = results.samples._root_dataset.select(todo_ids)
        extractor, config = make_extractor(results.config.extractor), results.config
        found = embed_patches(todo, config.patches_field, extractor, config.force_square, config.alpha, progress)
        results.remove_from_index(sample_ids=todo_ids)
        if found.label_ids:
            results.add_to_index(found.stacked(extractor), found.sample_ids, label_ids=found.label_ids)
        failures = found.failures
    results.save()
    return {
        "added": len(status["not_indexed"]),
        "updated": len(status["changed"]),
        "removed": len(status["deleted"]),
        "failures": failures,
    }


def query_view(
    results: RevsearchSimilarityIndex,
    samples,
    query: str | list[str] | ImageQuery,
    k: int,
    dist_field: str | None = None,
    allow_private_urls: bool = False,
    mode: str = "similar",
):
    """``samples`` sorted by similarity to sample id(s) or an image (path, URL, bytes, array).

    ``mode="copy"`` looks for edited copies of one query image (a sample's image, by id): CNN + pixel
    fusion (:meth:`~revsearch.fiftyone.brain.RevsearchSimilarityIndex.copy_search`); ``dist_field`` then
    holds relative distances (0 = identical, below 1 = nearer than the 5th hit)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "copy":
        return _copy_view(results, samples, query, k, dist_field, allow_private_urls)
    if results.has_patches:  # objects: their patches, sorted; a sample id stands for its objects
        samples = samples if isinstance(samples, fop.PatchesView) else samples.to_patches(results.config.patches_field)
        query = _objects_of(results, query) if isinstance(query, list) else query
    if isinstance(query, list) or (isinstance(query, str) and query in set(results.keys.tolist())):
        vector = query
    else:
        vector = results.embed_query(query, allow_private_urls)
    results.use_view(samples)
    view = results.sort_by_similarity(vector, k=k, dist_field=dist_field)
    if dist_field and not results.has_patches:
        clear_outside(samples._root_dataset, dist_field, view.values("id"))
    return view


def _objects_of(results: RevsearchSimilarityIndex, ids: list[str]) -> list[str]:
    """Query ids for a patch index: label ids as they are, each sample id replaced by its objects' ids."""
    keys = set(results.keys.tolist())
    samples = {i for i in ids if i not in keys}
    return [i for i in ids if i in keys] + [
        k for k, s in zip(results.keys.tolist(), results.sample_ids.tolist()) if s in samples
    ]


def _copy_view(results: RevsearchSimilarityIndex, samples, query, k: int, dist_field: str | None, allow_private: bool):
    """The copy mode of :func:`query_view`: the hits, best first, as a view of ``samples``."""
    if isinstance(query, list):
        if len(query) != 1:
            raise ValueError(f"the copy mode takes one query image, got {len(query)}: select a single sample")
        query = query[0]
    dataset = samples._root_dataset
    if isinstance(query, str) and query in set(results.sample_ids.tolist()):
        query = dataset[query].filepath
    results.use_view(samples)
    hits = results.copy_search(query, k, allow_private)
    ids = [h.key for h in hits]
    if dist_field:
        dataset.set_values(dist_field, {h.key: h.distance for h in hits}, key_field="id")
        clear_outside(dataset, dist_field, ids)
    return samples.select(ids, ordered=True)


def clear_outside(dataset, field: str, ids: list[str]) -> None:
    """Unset ``field`` on the samples not in ``ids`` (values left there by earlier searches)."""
    stale = dataset.exists(field).exclude(ids)
    if len(stale):
        stale.set_values(field, [None] * len(stale))


#: Field ``info`` key naming the index whose build kept its vectors in that field.
INDEX_INFO = "revsearch_brain_key"


def kept_field_name(brain_key: str) -> str:
    """The field a build under ``brain_key`` keeps its vectors in by default: one field per index."""
    return f"{brain_key}_embedding"


def describe_extractor(description: dict | None) -> str:
    """An extractor description (as stored with an index or field) in a few words."""
    if not description:
        return "unknown features"
    if description.get("type") == "pixel":
        return f"pixel {description.get('size')}x{description.get('size')} thumbnails, {description.get('dim')}-d"
    weights = description.get("weights") or "random"
    return f"cnn {description.get('backbone')} ({weights}, {description.get('pooling')}), {description.get('dim')}-d"


def describe_field(samples, field: str) -> str:
    """Which index kept the vectors of ``field`` (if one did) and the features they are."""
    info = _field_info(samples, field)
    features = describe_extractor(info.get(EXTRACTOR_INFO))
    if info.get(PCA_INFO):
        features += f", reduced by PCA to {PCAReducer.from_state(info[PCA_INFO]).output_dim}-d"
    key = info.get(INDEX_INFO)
    return f"'{field}' holds {features}" + (f", kept by the build of index '{key}'" if key else "")


def present_weights(backbone: str) -> list[str]:
    """Names of the backbone's torchvision weights whose file is in torch's cache (usable offline);
    ``DEFAULT`` first when the default weights are there."""
    from pathlib import Path

    import torch
    import torchvision

    enum = torchvision.models.get_model_weights(backbone)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    present = [m.name for m in enum if (folder / m.url.rsplit("/", 1)[-1]).is_file()]
    return (["DEFAULT"] if enum.DEFAULT.name in present else []) + present


def pixel_distance_scale(results: RevsearchSimilarityIndex) -> float | None:
    """What divides a pixel index's squared L2 distances into the mean squared difference per pixel
    value, values scaled to [0, 1] (0: identical thumbnails, 1: black against white): ``dim`` x 255²;
    None for other features or metrics."""
    extractor = results.config.extractor or {}
    if extractor.get("type") != "pixel" or results.config.metric != "sqeuclidean":
        return None
    return float(extractor["dim"]) * 255.0**2


def per_pixel_distances(results: RevsearchSimilarityIndex, view, dist_field: str | None) -> None:
    """Rewrite ``dist_field`` of a :func:`query_view` result on a pixel index on the scale of
    :func:`pixel_distance_scale` (the view's order is its own, not this field's)."""
    scale = pixel_distance_scale(results)
    if scale is None or not dist_field:
        return
    view.set_values(dist_field, [None if d is None else d / scale for d in view.values(dist_field)])
