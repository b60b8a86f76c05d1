"""Near-duplicate workflow on real Caltech images: nearest-neighbour distances, groups, keep one
per group, exact duplicates by file hash, edited copies by the copy mode's fusion."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from plugin_helpers import MODEL, make_dataset
from revsearch import Embedder, PixelFeatures
from revsearch.fiftyone import tools
from revsearch.fiftyone.duplicates import (
    COPY_THRESHOLD,
    copy_duplicate_groups,
    exact_duplicate_groups,
    near_duplicate_groups,
    nearest_neighbour_distances,
)


@pytest.fixture
def dataset_with_copies(caltech_files, tmp_path):
    """10 distinct images, two byte-identical copies of the first and one re-encoded copy of the second."""
    from PIL import Image

    files = list(caltech_files[::2][:10])
    copies = [tmp_path / "a1.jpg", tmp_path / "a2.jpg"]
    for copy in copies:
        shutil.copy(files[0], copy)
    Image.open(files[1]).save(tmp_path / "b1.jpg", quality=70)
    ds = make_dataset("dups", files + [str(c) for c in copies] + [str(tmp_path / "b1.jpg")])
    yield ds
    ds.delete()


@pytest.mark.parametrize("kind", ["kmeans", "pixel"])
def test_groups_keep_one_and_nearest_distances(dataset_with_copies, kind):
    ds = dataset_with_copies
    results, _ = tools.build_index(ds, kind, kind, extractor=PixelFeatures(8), n_clusters=2)
    ids = ds.values("id")
    features = PixelFeatures(8).embed_paths(ds.values("filepath"), progress=False).vectors.astype(np.float64)
    dist = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)

    distances = nearest_neighbour_distances(results, ds)
    np.testing.assert_allclose(sorted(distances), sorted(dist.min(axis=1)), rtol=1e-4, atol=1e-3)
    assert ds.values("nn_id") == [ids[j] for j in dist.argmin(axis=1)]

    threshold = float(np.sort(dist[1, :])[0]) * 1.01  # just holds the re-encoded copy of image 1
    assert near_duplicate_groups(results, ds, threshold) == 2
    groups = ds.values("dup_group")
    assert groups[0] == groups[10] == groups[11] is not None and groups[1] == groups[12] is not None
    assert sum(g is not None for g in groups) == 5
    assert set(ds.match_tags("duplicate").values("id")) == {ids[10], ids[11], ids[12]}


def test_exact_duplicates_by_file_hash(dataset_with_copies):
    ds = dataset_with_copies
    ids = ds.values("id")
    assert exact_duplicate_groups(ds) == 1  # the re-encoded copy differs in bytes
    groups = ds.values("file_dup_group")
    assert groups[0] == groups[10] == groups[11] == 0 and sum(g is not None for g in groups) == 3
    assert set(ds.match_tags("file_duplicate").values("id")) == {ids[10], ids[11]}


def test_edited_copies_are_grouped_by_the_fused_ranking(caltech_files, tmp_path):
    """A 0.2x resize and a heavy blur of one image, a crop of another: the copy mode's fusion groups
    each with its original and nothing else; the nearest fused distances separate copies from the rest."""
    first, second = cv2.imread(caltech_files[0]), cv2.imread(caltech_files[7])
    cv2.imwrite(str(tmp_path / "small.png"), cv2.resize(first, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(tmp_path / "blur.jpg"), cv2.GaussianBlur(first, (0, 0), 8))
    cv2.imwrite(str(tmp_path / "crop.jpg"), second[10:-10, 10:-10])
    copies = [str(tmp_path / name) for name in ("small.png", "blur.jpg", "crop.jpg")]
    ds = make_dataset("copies", caltech_files + copies)
    try:
        results, _ = tools.build_index(ds, "c", "exact", extractor=Embedder(**MODEL, batch_size=8), copy_pixels=16)
        ids = ds.values("id")
        assert copy_duplicate_groups(results, ds, dist_field="cd", id_field="cid") == 2
        groups = ds.values("copy_group")
        assert groups[0] == groups[24] == groups[25] is not None and groups[7] == groups[26] is not None
        assert sum(g is not None for g in groups) == 5
        assert set(ds.match_tags("duplicate").values("id")) == {ids[24], ids[25], ids[26]}
        nearest = dict(zip(ids, ds.values("cid")))
        assert nearest[ids[24]] == nearest[ids[25]] == ids[0] and nearest[ids[26]] == ids[7]
        dists = np.array(ds.values("cd"))
        copied = [0, 7, 24, 25, 26]
        assert dists[copied].max() < COPY_THRESHOLD < np.delete(dists, copied).min()
        assert results.copy_neighbours(1)[24][0].key == ids[0]

        view = ds.select(ids[1:])  # without the first image: its blur and resize still pair
        assert copy_duplicate_groups(results, view) == 2
        assert view.values("copy_group")[-3] == view.values("copy_group")[-2] is not None
    finally:
        ds.delete()
