"""CNN embedder: shapes, pooling, determinism, clear weight errors, real retrieval quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from helpers import SUBSET_CLASSES, write_edited_copy
from revsearch import Embedder, EmbedderConfig, ExactIndex
from revsearch.errors import WeightsUnavailableError


@pytest.fixture(scope="module")
def random_resnet50():
    return Embedder(EmbedderConfig(backbone="resnet50", weights=None, batch_size=8))


def test_resnet50_shapes_and_unit_norm(random_resnet50, subset_paths):
    batch = random_resnet50.embed_paths(subset_paths[:5], progress=False)
    assert batch.vectors.shape == (5, 2048) and batch.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, rtol=1e-5)


def test_output_is_deterministic_across_instances(random_resnet50, subset_paths):
    again = Embedder(EmbedderConfig(backbone="resnet50", weights=None, batch_size=3))
    a = random_resnet50.embed_paths(subset_paths[:4], progress=False).vectors
    b = again.embed_paths(subset_paths[:4], progress=False).vectors
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_avg_and_gem_pooling_differ_and_resnet18_dims(subset_paths):
    avg = Embedder(backbone="resnet18", weights=None, pooling="avg").embed_paths(subset_paths[:3], progress=False)
    gem = Embedder(backbone="resnet18", weights=None, pooling="gem").embed_paths(subset_paths[:3], progress=False)
    assert avg.vectors.shape == gem.vectors.shape == (3, 512)
    assert not np.allclose(avg.vectors, gem.vectors, atol=1e-3)


def test_gem_with_p1_is_average_pooling():
    from revsearch.features.cnn import gem_pool

    x = torch.rand(2, 4, 5, 5)
    torch.testing.assert_close(gem_pool(x, 1.0), x.mean(dim=(2, 3)))


def test_bad_files_are_skipped_not_fatal(random_resnet50, subset_paths, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths = [subset_paths[0], tmp_path / "bad.jpg", tmp_path / "missing.png", subset_paths[1]]
    batch = random_resnet50.embed_paths(paths, progress=False)
    assert batch.indices == [0, 3] and batch.vectors.shape == (2, 2048)
    assert set(batch.failures) == {1, 2} and "not a recognised" in batch.failures[1]


def test_unloadable_weights_fail_with_instructions(tmp_path, monkeypatch):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsUnavailableError, match="not a valid resnet18 state dict"):
        Embedder(backbone="resnet18", weights=str(bad))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no download possible, even with internet
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError, match="TORCH_HOME") as info:
        Embedder(backbone="resnet18", weights="IMAGENET1K_V1")
    assert "resnet18-f37072fd.pth" in str(info.value)


def test_pretrained_finds_edited_copies_and_same_class(pretrained_mobilenet, subset_paths, tmp_path):
    batch = pretrained_mobilenet.embed_paths(subset_paths, progress=False)
    index = ExactIndex(pretrained_mobilenet.dim)
    keys = [str(p) for p in subset_paths]
    index.add(keys, batch.vectors)
    copies = [write_edited_copy(p, tmp_path / f"q{i}.jpg", seed=i) for i, p in enumerate(subset_paths[::2])]
    results = index.search(pretrained_mobilenet.embed_paths(copies, progress=False).vectors, k=5)
    assert [r[0].key for r in results] == keys[::2]
    # class-level: precision@5 of same-class neighbours (chance is 5/23) for each image as query
    label = {k: k.split("/")[-2] for k in keys}
    self_results = index.search(batch.vectors, k=6)
    precision = np.mean([np.mean([label[h.key] == label[r[0].key] for h in r[1:]]) for r in self_results])
    assert precision > 0.8, precision
    assert set(label.values()) == set(SUBSET_CLASSES)


@pytest.mark.slow
def test_onnxruntime_gives_the_torch_vectors_and_caches_the_export(subset_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path))
    config = dict(backbone="resnet18", weights=None, batch_size=4)
    reference = Embedder(EmbedderConfig(**config)).embed_paths(subset_paths[:6], progress=False)
    onnx = Embedder(EmbedderConfig(**config, runtime="onnxruntime"))
    exported = list((tmp_path / "onnx").glob("resnet18-224-*.onnx"))
    assert len(exported) == 1
    batch = onnx.embed_paths(subset_paths[:6], progress=False)
    assert batch.indices == reference.indices
    np.testing.assert_allclose(batch.vectors, reference.vectors, atol=1e-4)
    assert onnx.describe() == Embedder(EmbedderConfig(**config)).describe()  # same vectors, same index

    mtime = exported[0].stat().st_mtime_ns
    Embedder(EmbedderConfig(**config, runtime="onnxruntime"))
    assert exported[0].stat().st_mtime_ns == mtime  # reused, not exported again


@pytest.mark.slow
def test_onnx_export_depends_on_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    other_weights = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other_weights)
    Embedder(backbone="resnet18", weights=None, runtime="onnxruntime")
    Embedder(backbone="resnet18", weights=str(other_weights), runtime="onnxruntime")
    assert len(list((tmp_path / "cache" / "onnx").glob("resnet18-224-*.onnx"))) == 2


def test_unknown_runtime_is_a_clear_error():
    with pytest.raises(ValueError, match="runtime must be one of"):
        Embedder(backbone="resnet18", weights=None, runtime="tensorrt")
