"""Folder indexes written by earlier code (tests/fixtures/legacy, commit 8a8fad0) still load and answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

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
