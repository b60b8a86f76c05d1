"""Moving a Milvus-backed index to another Milvus (here: another Lite file) without re-embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from revsearch import MilvusIndex, PixelFeatures, SearchIndex
from revsearch.cli.main import main as cli_main
from revsearch.index.milvus_move import copy_collection, iter_rows


@pytest.fixture()
def lite_index(subset_paths, tmp_path):
    index, report = SearchIndex.build(
        [str(p) for p in subset_paths],
        tmp_path / "idx",
        backend="milvus",
        extractor=PixelFeatures(8),
        pca_dim=None,
        progress=False,
    )
    assert not report.failures
    yield index
    index.backend.close()


def _ranked(index: SearchIndex, paths) -> list[list[tuple[str, float]]]:
    return [[(h.key, round(h.distance, 3)) for h in index.query(str(p), k=5)] for p in paths]


def test_move_to_another_milvus_keeps_results_and_reopens_there(lite_index, subset_paths, tmp_path):
    before = _ranked(lite_index, subset_paths[:5])
    source_uri = lite_index.backend.uri
    target_uri = str(tmp_path / "server.db")
    lite_index.move_to(target_uri, progress=False)

    assert lite_index.backend.uri == target_uri and len(lite_index) == 24
    assert _ranked(lite_index, subset_paths[:5]) == before
    manifest = json.loads((lite_index.directory / "manifest.json").read_text())
    assert manifest["backend"]["uri"] == target_uri
    lite_index.backend.close()

    reopened = SearchIndex.load(lite_index.directory)
    try:
        assert reopened.backend.uri == target_uri
        assert _ranked(reopened, subset_paths[:5]) == before
    finally:
        reopened.backend.close()
    source = MilvusIndex.load(lite_index.directory, {**manifest["backend"], "uri": source_uri})
    try:
        assert len(source) == 24  # the source is left as it was
    finally:
        source.close()


def test_copy_pages_every_row_once(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2500, 16)).astype(np.float32)
    keys = [f"k{i}" for i in range(2500)]
    source = MilvusIndex(16, "src", uri=str(tmp_path / "a.db"))
    target = MilvusIndex(16, "dst", uri=str(tmp_path / "b.db"))
    try:
        source.add(keys, vectors)
        pages = list(iter_rows(source, 1000))
        assert [len(k) for k, _ in pages] == [1000, 1000, 500]
        got = dict(zip([k for ks, _ in pages for k in ks], np.concatenate([v for _, v in pages])))
        assert sorted(got) == sorted(keys)
        np.testing.assert_array_equal(np.stack([got[k] for k in keys]), vectors)
        assert copy_collection(source, target, progress=False) == 2500
        np.testing.assert_array_equal(target.vectors(keys[::97]), vectors[::97])
    finally:
        source.close()
        target.close()


def test_move_to_where_it_already_is_is_refused_and_loses_nothing(lite_index, subset_paths):
    before = _ranked(lite_index, subset_paths[:3])
    with pytest.raises(ValueError, match="already at"):
        lite_index.move_to(lite_index.backend.uri.replace("/idx/", "/idx/./"), progress=False)
    assert len(lite_index) == 24 and _ranked(lite_index, subset_paths[:3]) == before


def test_move_needs_a_milvus_backend(subset_paths, tmp_path):
    index, _ = SearchIndex.build(
        [str(p) for p in subset_paths[:5]],
        tmp_path / "x",
        backend="exact",
        extractor=PixelFeatures(8),
        pca_dim=None,
        progress=False,
    )
    with pytest.raises(ValueError, match="needs a milvus backend"):
        index.move_to(str(tmp_path / "t.db"))


def test_cli_move(lite_index, subset_paths, tmp_path, capsys):
    before = _ranked(lite_index, subset_paths[:3])
    lite_index.backend.close()
    target = str(tmp_path / "moved.db")
    assert cli_main(["move", "--index-dir", str(lite_index.directory), "--uri", target, "--quiet"]) == 0
    assert "moved 24 vectors" in capsys.readouterr().out
    reopened = SearchIndex.load(lite_index.directory)
    try:
        assert reopened.backend.uri == target and _ranked(reopened, subset_paths[:3]) == before
    finally:
        reopened.backend.close()
