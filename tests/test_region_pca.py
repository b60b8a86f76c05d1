"""The whitened PCA of a region index keeps enough samples per dimension: on a small index a 256-d
whitening fitted on its own few hundred region vectors drowned the match in the sample's noise (a
photo's own centre crop ranked 9th of 31), so the dimension shrinks with the number of vectors."""

from __future__ import annotations

import numpy as np

from helpers import CALTECH, caltech_subset
from revsearch.features.cnn import EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.features.regions import RegionEmbedder, embed_crop
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


def test_on_a_small_index_a_photos_centre_crop_finds_that_photo_first(pretrained_mobilenet):
    classes = sorted(p.name for p in CALTECH.iterdir() if p.name not in ("BACKGROUND_Google", "Faces_easy"))[:30]
    paths = [str(p) for p in caltech_subset(tuple(classes), per_class=1)]
    extractor = RegionEmbedder(EmbedderConfig(backbone="mobilenet_v2", weights="IMAGENET1K_V1"))
    vectors = extractor.embed_paths(paths, progress=False).vectors
    entries = RegionEntries(None)
    reduced = entries.reduce(vectors)
    entries.index = ExactIndex(reduced.shape[1])
    entries.add(paths, reduced)
    for path in paths[::5]:
        image = load_image(path)
        h, w = image.shape[:2]
        crop = image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
        best = entries.search(embed_crop(extractor.describe(), crop), k=3)
        assert best[0][0] == path, (path, best)
