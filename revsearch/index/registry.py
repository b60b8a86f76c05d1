"""Make and re-open vector indexes by kind (``exact``, ``kmeans``, ``milvus``): the one factory behind
folder indexes and brain runs; ``pixel``, the older name of pixel features in an exact index, is accepted."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from revsearch.index.exact import ExactIndex
from revsearch.index.ivf import IVFIndex, default_n_clusters
from revsearch.index.protocol import VectorIndex

INDEX_KINDS = ("exact", "kmeans", "milvus")
#: The older index kind that meant pixel features in an exact index.
LEGACY_PIXEL = "pixel"
#: Options a Milvus index takes (everything else belongs to other kinds).
MILVUS_OPTIONS = ("collection", "uri", "token", "db_name", "metric", "index_type", "index_params", "search_params")
MILVUS_OPTIONS += ("consistency_level", "bulk_storage")


def check_kind(kind: str, accept_legacy: bool = True) -> str:
    """``kind`` as one of :data:`INDEX_KINDS` (``pixel`` -> ``exact``); ValueError otherwise."""
    if accept_legacy and kind == LEGACY_PIXEL:
        return "exact"
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}: backend must be one of {INDEX_KINDS}")
    return kind


def create_index(
    kind: str,
    sample: np.ndarray,
    dtype: np.dtype | type | None = None,
    *,
    n_clusters: int | None = None,
    nprobe: int | None = None,
    overwrite: bool = False,
    **milvus_options,
) -> VectorIndex:
    """A new, empty index of ``kind`` for vectors like ``sample`` (K-means is fitted on it). ``dtype``: an exact
    index's (default: the sample's); ``n_clusters``, ``nprobe``: kmeans; ``overwrite``, :data:`MILVUS_OPTIONS`."""
    kind = check_kind(kind)
    sample = np.asarray(sample)
    if kind == "exact":
        return ExactIndex(sample.shape[1], dtype or sample.dtype)
    if kind == "kmeans":
        n_clusters = min(n_clusters or default_n_clusters(len(sample)), len(sample))
        return IVFIndex.fit(sample, n_clusters, nprobe)
    unknown = set(milvus_options) - set(MILVUS_OPTIONS)
    if unknown:
        raise ValueError(f"unknown Milvus options {sorted(unknown)}; known: {MILVUS_OPTIONS}")
    from revsearch.index.milvus import MilvusIndex  # pymilvus (and pandas, grpc) only when a Milvus index is used

    return MilvusIndex(sample.shape[1], overwrite=overwrite, **milvus_options)


def load_index(config: dict, folder: Path | None = None, token: str = "") -> VectorIndex:
    """Re-open the index ``config`` describes: from its inline state (``keys`` / ``vectors``), from
    the files it saved in ``folder``, or (milvus) by reconnecting to its existing collection."""
    kind = check_kind(config["kind"])
    if kind == "milvus":
        from revsearch.index.milvus import MilvusIndex  # pymilvus (and pandas, grpc) only when a Milvus index is used

        return MilvusIndex.load(folder, config, token)
    cls = ExactIndex if kind == "exact" else IVFIndex
    if folder is None or "vectors" in config:
        return cls.from_state(config)
    return cls.load(folder, config)


def collection_name(*parts: str) -> str:
    """A valid Milvus collection name (ASCII letters, digits, _) from ``parts``: ``revsearch_<a>_<b>``."""
    return re.sub(r"[^0-9A-Za-z_]", "_", "_".join(("revsearch",) + parts))[:240]
