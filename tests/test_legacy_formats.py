"""Folder indexes written by earlier code (tests/fixtures/legacy: commit 8a8fad0; its kmeans_regions: 0b248b7)
still load and answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from fixtures.make_region_fixture import query_image

from revsearch import SearchIndex

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.mark.parametrize("kind", ["exact", "kmeans", "milvus", "pixel"])
def test_old_folder_index_loads_and_answers_as_before(kind, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(LEGACY / "folder" / kind, folder)
    expected = json.loads((folder / "expected.json").read_text())
    index = SearchIndex.load(folder)
    try:
        assert len(index) == 8
        assert index.check()["only_in_store"] == index.check()["only_in_manifest"] == 0
        for name, hits in expected.items():
            got = index.query(str(LEGACY / "images" / name), k=3)
            assert [Path(h.key).name for h in got] == [h[0] for h in hits]
            assert [h.distance for h in got] == pytest.approx([h[1] for h in hits], rel=1e-4, abs=1e-3)
    finally:
        close = getattr(index.backend, "close", None)
        if close:
            close()


def test_old_kmeans_region_index_keeps_its_region_ivf_answers_and_updates(pretrained_mobilenet, tmp_path):
    """Written by commit 0b248b7 (tests/fixtures/make_region_fixture.py): its region entries sit in a
    K-means IVF of their own (new builds keep them in an exact index); it answers as it did, and an
    update keeps its region entries complete."""
    folder = tmp_path / "kmeans_regions"
    shutil.copytree(LEGACY / "folder" / "kmeans_regions", folder)
    expected = json.loads((folder / "expected.json").read_text())
    index = SearchIndex.load(folder)
    try:
        assert index.regions.index.kind == "kmeans"
        for name, hits in expected.items():
            got = index.query_regions(query_image(str(LEGACY / "images" / name)), k=3)
            assert {(Path(h.key).name, h.region) for h in got} == {(h[0], h[1]) for h in hits}
            assert [h.distance for h in got] == pytest.approx([h[2] for h in hits], rel=1e-4)
        new = tmp_path / "new.png"
        cv2.imwrite(str(new), cv2.resize(cv2.imread(str(LEGACY / "images" / "img2.png")), (48, 40)))
        index.add_paths([str(new)], progress=False)
        check = index.check()
        assert check["region_vectors"] == 9 * index.regions.per_image
        assert check["regions_only_in_manifest"] == check["regions_incomplete"] == 0
    finally:
        index.close()
