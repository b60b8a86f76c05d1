"""Copy a Milvus collection to another Milvus (e.g. a Lite file to a server) without re-embedding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from revsearch.errors import RevsearchError
from revsearch.index.milvus import KEY_FIELD, VECTOR_FIELD, MilvusIndex, from_milvus_key
from revsearch.index.milvus_bulk import ROWS_PER_FILE
from revsearch.index.milvus_uri import is_lite_uri

#: Rows read from the source and handed to the target per call (bulk import: one file's worth).
COPY_BATCH = 10_000


def same_collection_place(uri_a: str, db_a: str, uri_b: str, db_b: str) -> bool:
    """Whether two (URI, database) pairs name the same Milvus database (Lite files by resolved path)."""
    if is_lite_uri(uri_a) and is_lite_uri(uri_b):
        return Path(uri_a).expanduser().resolve() == Path(uri_b).expanduser().resolve()
    return uri_a.rstrip("/") == uri_b.rstrip("/") and (db_a or "default") == (db_b or "default")


def iter_rows(source: MilvusIndex, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, vectors) pages of the whole collection, ``batch_size`` rows at a time."""
    iterator = source.client.query_iterator(
        source.collection, batch_size=min(batch_size, 16_384), filter="", output_fields=[KEY_FIELD, VECTOR_FIELD]
    )
    keys: list[str] = []
    vectors: list[list[float]] = []
    try:
        while page := iterator.next():
            keys.extend(from_milvus_key(row[KEY_FIELD]) for row in page)
            vectors.extend(row[VECTOR_FIELD] for row in page)
            if len(keys) >= batch_size:
                yield keys, np.asarray(vectors, np.float32).reshape(len(keys), source.dim)
                keys, vectors = [], []
    finally:
        iterator.close()
    if keys:
        yield keys, np.asarray(vectors, np.float32).reshape(len(keys), source.dim)


def copy_collection(source: MilvusIndex, target: MilvusIndex, progress: bool = True) -> int:
    """Add every row of ``source`` to ``target`` (bulk import where ``target`` can, else upserts), counts
    checked; returns the number of rows copied."""
    if target.dim != source.dim:
        raise RevsearchError(f"target holds {target.dim}-d vectors, source {source.dim}-d")
    total = len(source)
    bulk = target.bulk_storage is not None and target.supports_bulk_import
    add = target.bulk_add if bulk else target.add
    with tqdm(
        total=total, desc="copy vectors" + (" (bulk import)" if bulk else ""), unit="vec", disable=not progress
    ) as bar:
        for keys, vectors in iter_rows(source, ROWS_PER_FILE if bulk else COPY_BATCH):
            add(keys, vectors)
            bar.update(len(keys))
    copied = len(target)
    if copied != total:
        raise RevsearchError(
            f"copied collection holds {copied} rows, the source {total}: the source index is "
            "unchanged; run the move again"
        )
    return copied
