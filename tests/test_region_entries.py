"""Region entries: their whitened PCA keeps enough samples per dimension (on a small index a 256-d
whitening fitted on its own few hundred region vectors drowned the match in the sample's noise: a
photo's own centre crop ranked 9th of 31), and a K-means index keeps them in an exact index (its IVF
probing lost most region matches), so both kinds find the same images by region."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import CALTECH, caltech_subset
from revsearch.features.cnn import Embedder, EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.features.regions import RegionEmbedder, embed_crop, region_windows
from revsearch.folder.index import SearchIndex
from revsearch.index import milvus
from revsearch.index.exact import ExactIndex
from revsearch.index.milvus import MilvusIndex
from revsearch.retrieval.regions import REGION_DIM, SAMPLES_PER_DIM, RegionEntries


def test_a_small_index_gets_fewer_whitened_dimensions():
    rng = np.random.default_rng(0)
    small = RegionEntries(None)
    small.reduce(rng.normal(size=(30, 14, 1280)).astype(np.float32))
    assert small.pca.output_dim == 30 * 14 // SAMPLES_PER_DIM
    large = RegionEntries(None)
    large.reduce(rng.normal(size=(200, 14, 1280)).astype(np.float32))
    assert large.pca.output_dim == REGION_DIM


def one_photo_per_class(n: int) -> list[str]:
    classes = sorted(p.name for p in CALTECH.iterdir() if p.name not in ("BACKGROUND_Google", "Faces_easy"))[:n]
    return [str(p) for p in caltech_subset(tuple(classes), per_class=1)]


def centre_crop(path: str):
    image = load_image(path)
    h, w = image.shape[:2]
    return image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]


def test_on_a_small_index_a_photos_centre_crop_finds_that_photo_first(pretrained_mobilenet):
    paths = one_photo_per_class(30)
    extractor = RegionEmbedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1"))
    vectors = extractor.embed_paths(paths, progress=False).vectors
    entries = RegionEntries(None)
    reduced = entries.reduce(vectors)
    entries.index = ExactIndex(reduced.shape[1])
    entries.add(paths, reduced)
    for path in paths[::5]:
        best = entries.search(embed_crop(extractor.describe(), centre_crop(path)), k=3)
        assert best[0][0] == path, (path, best)


def test_a_kmeans_index_finds_by_region_what_an_exact_one_finds(pretrained_mobilenet, tmp_path):
    """The region entries of a K-means index are in an exact index. (At 20 images an IVF would also search
    exactly, so the equal results check the wiring; the kind is what tells the layouts apart.)"""
    paths = one_photo_per_class(20)
    extractor = RegionEmbedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1"))
    found = {}
    for kind in ("exact", "kmeans"):
        index, _ = SearchIndex.build(paths, tmp_path / kind, kind, extractor, progress=False)
        assert index.regions.index.kind == "exact"
        found[kind] = [(hit.key, hit.region) for hit in index.query_regions(centre_crop(paths[3]), k=5)]
        index.close()
    assert found["kmeans"] == found["exact"] and found["exact"][0][0] == paths[3]


def test_each_entry_is_the_gem_of_its_window_of_the_feature_map():
    """Entry 0 is the whole-image descriptor; entry j the GeM of region j's cells (float64 reference)."""
    extractor = RegionEmbedder(EmbedderConfig(backbone="mobilenet_v2", weights=None, runtime="torch", image_size=96))
    batch = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    maps = extractor.feature_maps(batch).astype(np.float64)
    windows = [(0, 0, maps.shape[2], maps.shape[3]), *region_windows(maps.shape[-1])]
    powered = np.maximum(maps, 1e-6) ** 3.0
    expected = np.stack([powered[:, :, y0:y1, x0:x1].mean(axis=(2, 3)) ** (1 / 3) for y0, x0, y1, x1 in windows], 1)
    expected /= np.linalg.norm(expected, axis=2, keepdims=True)
    got = extractor.forward(batch)
    assert got.shape == (2, len(windows), extractor.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got[:, 0], extractor.pool(extractor.feature_maps(batch)), atol=1e-5)


@pytest.mark.parametrize("view", [False, True])
def test_on_milvus_a_region_query_returns_more_images_than_one_search_holds_hits(tmp_path, monkeypatch, view):
    """k images x 14 regions > 16,384 (the most hits one Milvus search returns): the hits come page after
    page until they hold k images, and the answer is the exact index's (in a view too, filtered in chunks)."""
    monkeypatch.setattr(milvus, "FILTER_CHUNK_KEYS", 5_000)  # a view's keys in four filters
    rng = np.random.default_rng(3)
    n_images, per_image, k = 1_300, 14, 1_250
    vectors = (rng.normal(size=(n_images, 1, 16)) + 0.5 * rng.normal(size=(n_images, per_image, 16))).astype(np.float32)
    images = [f"img{i}" for i in range(n_images)]
    exact = RegionEntries(None)
    reduced = exact.reduce(vectors)
    exact.index = ExactIndex(reduced.shape[1])
    lite = RegionEntries(
        MilvusIndex(reduced.shape[1], collection="r", uri=str(tmp_path / "m.db")), exact.pca, per_image
    )
    try:
        for entries in (exact, lite):
            entries.add(images, reduced)
        allowed = images[:1_270] if view else None
        queries = rng.normal(size=(3, 16)).astype(np.float32)
        assert k * per_image > lite.index.max_limit
        got, want = lite.search(queries, k, allowed), exact.search(queries, k, allowed)
        assert len(got) == k
        assert {(image, region) for image, region, _ in got} == {(image, region) for image, region, _ in want}
        np.testing.assert_allclose([d for *_, d in got], [d for *_, d in want], rtol=1e-4, atol=1e-5)
        if view:
            assert {image for image, _, _ in got} <= set(allowed)
    finally:
        lite.index.close()


def test_a_region_build_fits_its_whole_image_pca_on_what_a_build_without_regions_fits_it_on(
    pretrained_mobilenet, tmp_path
):
    """Region entries are sampled per image (``fit_sample`` / 14 images here: 10 of 24); the whole-image
    PCA still sees every image a build without regions samples, so whole-image queries rank as there."""
    paths = one_photo_per_class(24)
    config = EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1")
    reducers = []
    for name, extractor in (("whole", Embedder(config)), ("regions", RegionEmbedder(config))):
        index, _ = SearchIndex.build(
            paths, tmp_path / name, "exact", extractor, progress=False, pca_dim=8, fit_sample=140
        )
        reducers.append(index.reducer)
        index.close()
    whole, regions = reducers
    assert regions.output_dim == whole.output_dim
    np.testing.assert_allclose(regions.mean, whole.mean, atol=1e-5)
    np.testing.assert_allclose(regions.explained_variance, whole.explained_variance, rtol=1e-3)
