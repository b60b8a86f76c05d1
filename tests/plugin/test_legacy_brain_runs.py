"""Brain runs written by earlier code (tests/fixtures/legacy, commit 8a8fad0) still load and answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fiftyone as fo
import pytest

from plugin_helpers import unique_name

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def legacy_dataset(tmp_path_factory):
    """The exported dataset (pixel, kmeans and milvus runs) imported afresh, its Lite file copied."""
    root = tmp_path_factory.mktemp("legacy")
    shutil.copytree(LEGACY, root / "legacy")
    ds = fo.Dataset.from_dir(
        str(root / "legacy" / "dataset"),
        dataset_type=fo.types.FiftyOneDataset,
        rel_dir=str(root / "legacy" / "images"),
        name=unique_name("legacy"),
    )
    yield ds, root / "legacy"
    ds.delete()


@pytest.mark.parametrize("key", ["pixel", "kmeans", "milvus"])
def test_old_brain_run_loads_and_sorts_as_before(legacy_dataset, key, monkeypatch):
    ds, root = legacy_dataset
    monkeypatch.chdir(root)  # the milvus run stored a relative Lite URI
    expected = json.loads((root / "brain_expected.json").read_text())[key]
    results = ds.load_brain_results(key)
    assert results.total_index_size == 8
    view = results.sort_by_similarity(ds.first().id, k=3, dist_field="d")
    assert [Path(p).name for p in view.values("filepath")] == [e[0] for e in expected]
    assert view.values("d") == pytest.approx([e[1] for e in expected], rel=1e-4, abs=1e-3)


def test_old_pca_field_still_builds_an_index(legacy_dataset):
    from revsearch.fiftyone import tools

    ds, _ = legacy_dataset
    results, _ = tools.build_index(
        ds, unique_name("k").replace("-", "_"), "kmeans", embeddings_field="emb_pca", n_clusters=2
    )
    assert results.pca is not None and results.pca.output_dim == 4
    assert results.total_index_size == 8
