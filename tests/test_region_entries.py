"""Region entries: their whitened PCA keeps enough samples per dimension (on a small index a 256-d
whitening fitted on its own few hundred region vectors drowned the match in the sample's noise: a
photo's own centre crop ranked 9th of 31), and a K-means index keeps them in an exact index (its IVF
probing lost most region matches), so both kinds find the same images by region."""

from __future__ import annotations

import numpy as np

from helpers import CALTECH, caltech_subset
from revsearch.features.cnn import EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.features.regions import RegionEmbedder, embed_crop, region_windows
from revsearch.folder.index import SearchIndex
from revsearch.index.exact import ExactIndex
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
