"""The one index core: every kind honours the VectorIndex protocol, made and re-opened by the registry,
and any features go in any kind (pixel features in Milvus, CNN features in an exact index)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from revsearch import PixelFeatures, SearchIndex
from revsearch.index.protocol import VectorIndex
from revsearch.index.registry import INDEX_KINDS, check_kind, collection_name, create_index, load_index


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return [f"k{i}" for i in range(300)], rng.normal(size=(300, 12)).astype(np.float32)


def _make(kind, vectors, tmp_path):
    options = {"uri": str(tmp_path / "core.db"), "collection": "core"} if kind == "milvus" else {}
    return create_index(kind, vectors, n_clusters=8 if kind == "kmeans" else None, **options)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_kind_honours_the_protocol_and_round_trips(kind, data, tmp_path):
    keys, vectors = data
    index = _make(kind, vectors, tmp_path)
    try:
        assert isinstance(index, VectorIndex) and index.kind == kind and index.dim == 12
        index.add(keys, vectors)
        index.remove(keys[:10])
        assert len(index) == 290 and sorted(index.keys()) == sorted(keys[10:])
        assert index.contains(["k0", "k10", "nope"]) == {"k10"}
        np.testing.assert_allclose(index.vectors(["k20", "k11"]), vectors[[20, 11]], rtol=1e-6)
        with pytest.raises(KeyError):
            index.vectors(["k0"])
        queries = vectors[[15, 40]]
        top = index.search(queries, 5, allowed=keys[10:60])
        assert [row[0].key for row in top] == ["k15", "k40"]
        assert all(h.key in set(keys[10:60]) for row in top for h in row)
        within = index.range_search(queries, 1e-3)
        assert [[h.key for h in row] for row in within] == [["k15"], ["k40"]]
        assert index.supports_least_similarity == (kind != "milvus")
        folder = tmp_path / "saved"
        folder.mkdir()
        index.save(folder)
        config = json.loads(json.dumps(index.config()))
        index.close()
        again = load_index(config, folder)
        assert [h.key for h in again.search(queries, 3, allowed=keys[10:60])[0]] == [h.key for h in top[0][:3]]
        if kind != "milvus":  # inline state (brain runs): keys and vectors in step, whatever the row order
            inline = load_index(json.loads(json.dumps(again.state())))
            np.testing.assert_array_equal(inline.vectors(keys[10:]), again.vectors(keys[10:]))
        again.close()
    finally:
        index.close()


def test_kinds_and_names():
    assert check_kind("pixel") == "exact"  # the older kind: pixel features in an exact index
    with pytest.raises(ValueError, match="backend must be one of"):
        check_kind("faiss")
    assert collection_name("my data-set", "ключ") == "revsearch_my_data_set_____"


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_pixel_features_in_every_kind(kind, subset_paths, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [shutil.copy(p, folder / f"{p.parent.name}_{p.name}") for p in subset_paths[:12]]
    options = {"n_clusters": 3} if kind == "kmeans" else {}
    index, report = SearchIndex.build(paths, tmp_path / "idx", kind, PixelFeatures(16), progress=False, **options)
    assert not report.failures and len(index) == 12
    assert index.manifest()["extractor"]["type"] == "pixel" and index.backend.kind == kind
    hit = index.query(paths[5], k=1)[0]
    assert hit.key == str(paths[5]) and hit.distance == pytest.approx(0.0, abs=1e-2)
    index.backend.close()
    again = SearchIndex.load(tmp_path / "idx")
    assert again.query(paths[7], k=1)[0].key == str(paths[7])
    again.backend.close()


def test_cnn_features_in_an_exact_index(pretrained_mobilenet, subset_paths, tmp_path):
    index, _ = SearchIndex.build(subset_paths[:8], tmp_path / "idx", "exact", pretrained_mobilenet, progress=False)
    assert index.manifest()["extractor"]["type"] == "cnn" and index.backend.kind == "exact"
    assert index.query(subset_paths[2], k=1)[0].key == str(subset_paths[2])
