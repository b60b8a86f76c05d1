"""SearchIndex end to end on real images: every backend, PCA, incremental updates, reload."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import write_edited_copy
from revsearch import SearchIndex
from revsearch.errors import IndexMismatchError, IndexNotFoundError
from revsearch.retrieval.options import RetrievalOptions


@pytest.fixture
def folder(tmp_path, subset_paths):
    """A writable copy of the subset (so files can be added, changed and deleted)."""
    root = tmp_path / "images"
    root.mkdir()
    out = []
    for p in subset_paths:
        dst = root / f"{p.parent.name}_{p.name}"
        shutil.copy(p, dst)
        out.append(dst)
    return out


@pytest.mark.parametrize(
    "backend, options",
    [
        ("milvus", {}),
        ("kmeans", {"n_clusters": 4, "nprobe": 2}),
        ("exact", {"pca_dim": 16}),
    ],
)
def test_edited_copy_is_top_hit_and_survives_reload(pretrained_mobilenet, folder, tmp_path, backend, options):
    # plain nearest neighbours (DBA / alpha-QE favour look-alikes over copies: tests/test_retrieval_wiring.py)
    index, report = SearchIndex.build(
        folder,
        tmp_path / "idx",
        backend,
        pretrained_mobilenet,
        progress=False,
        options=RetrievalOptions.off(),
        **options,
    )
    assert len(index) == len(folder) and not report.failures
    queries = [write_edited_copy(p, tmp_path / f"q{i}.jpg", i) for i, p in enumerate(folder[::4])]
    tops = [index.query(q, k=3)[0].key for q in queries]
    assert tops == [str(p) for p in folder[::4]]
    if backend == "milvus":
        index.backend.close()
    again = SearchIndex.load(tmp_path / "idx")
    assert [again.query(q, k=3)[0].key for q in queries] == tops
    if options.get("pca_dim"):
        assert again.embed_query(queries[0]).shape == (1, 16)


def test_pixel_backend(folder, tmp_path):
    index, _ = SearchIndex.build(folder, tmp_path / "px", "pixel", progress=False)
    assert index.query(folder[3], k=1)[0].key == str(folder[3])
    assert index.query(folder[3], k=1)[0].distance == 0.0


def test_bad_files_reported_and_good_ones_indexed(pretrained_mobilenet, folder, tmp_path):
    bad = tmp_path / "images" / "broken.jpg"
    bad.write_bytes(folder[0].read_bytes()[:500])
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    paths = folder + [bad, tmp_path / "images" / "empty.png"]
    index, report = SearchIndex.build(paths, tmp_path / "idx", "exact", pretrained_mobilenet, progress=False)
    assert len(index) == len(folder)
    assert set(report.failures) == {str(bad), str(tmp_path / "images" / "empty.png")}
    assert "truncated" in report.failures[str(bad)]
    assert SearchIndex.load(tmp_path / "idx").failures == report.failures


def test_incremental_sync_adds_removes_and_reembeds_changed(pretrained_mobilenet, folder, tmp_path):
    index, _ = SearchIndex.build(folder[:20], tmp_path / "idx", "milvus", pretrained_mobilenet, progress=False)
    rerun = index.add_paths(folder[:20], progress=False)
    assert rerun.unchanged == 20 and rerun.added == [] and len(index) == 20  # idempotent
    folder[0].unlink()
    shutil.copy(folder[10], folder[1])  # content changed on disk
    assert index.stale() == {"missing": [str(folder[0])], "changed": [str(folder[1])]}
    report = index.sync(folder[1:], progress=False)
    assert report.removed == [str(folder[0])]
    assert sorted(report.added) == sorted([str(folder[1])] + [str(p) for p in folder[20:]])
    assert len(index) == len(folder) - 1
    assert sorted(index.backend.keys()) == sorted(str(p) for p in folder[1:])
    hits = index.query(folder[10], k=2)
    assert {h.key for h in hits} == {str(folder[10]), str(folder[1])}
    assert index.stale() == {"missing": [], "changed": []}


def test_errors_name_the_cause(pretrained_mobilenet, folder, tmp_path):
    with pytest.raises(IndexNotFoundError, match="no revsearch index"):
        SearchIndex.load(tmp_path / "nothing")
    index, _ = SearchIndex.build(folder, tmp_path / "idx", "exact", pretrained_mobilenet, progress=False)
    with pytest.raises(IndexMismatchError, match="dimension 3"):
        index.query_vectors(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="backend must be one of"):
        SearchIndex.build(folder, tmp_path / "x", "faiss", pretrained_mobilenet, progress=False)
