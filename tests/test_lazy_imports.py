"""A query from a cached ONNX export imports neither torch, torchvision nor scikit-learn (nor pymilvus
for an index that is not in Milvus); loading the plugin imports none of the heavy modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from revsearch import Embedder, EmbedderConfig, SearchIndex
from revsearch.features.factory import make_extractor

HEAVY = ("torch", "torchvision", "sklearn", "pymilvus")
PROBE = f"""
import json, sys
from revsearch.cli.main import main
code = main(["query", sys.argv[1], "--index-dir", sys.argv[2], "-k", "3", "--json"])
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _query_in_fresh_process(image: Path, index_dir: Path, cache: Path) -> dict:
    env = {**os.environ, "REVSEARCH_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(image), str(index_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_query_from_cached_export_needs_no_torch_sklearn_or_pymilvus(subset_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path / "cache"))
    embedder = Embedder(EmbedderConfig(backbone="resnet18", weights=None, batch_size=8, runtime="onnxruntime"))
    index, _ = SearchIndex.build(subset_paths[:8], tmp_path / "idx", "exact", embedder, pca_dim=4, progress=False)
    assert index.manifest()["extractor"]["weights_digest"] == embedder.digest
    probe = _query_in_fresh_process(subset_paths[0], tmp_path / "idx", tmp_path / "cache")
    assert probe == {"code": 0, "heavy": []}


def test_without_the_cached_export_the_model_is_rebuilt_and_gives_the_same_vectors(subset_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path / "cache"))
    built = Embedder(backbone="resnet18", weights=None, runtime="onnxruntime")
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path / "empty"))  # another machine: nothing cached
    again = make_extractor(built.describe())
    assert again.describe() == built.describe()
    vectors = [e.embed_paths(subset_paths[:2], progress=False).vectors for e in (built, again)]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_old_descriptions_without_a_weights_hash_still_load(tmp_path, monkeypatch):
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path))
    description = json.loads(
        '{"type": "cnn", "backbone": "resnet18", "weights": null, "pooling": "gem", '
        '"gem_p": 3.0, "image_size": 224, "model_id": "resnet18/random", "dim": 512}'
    )
    embedder = make_extractor(description)
    assert embedder.digest and embedder.model_id == "resnet18/random"


PLUGIN_PROBE = """
import json, sys
import fiftyone.operators, fiftyone.brain  # loaded in the App before any plugin
import fiftyone.plugins.core as fopc
from fiftyone.plugins.context import PluginContext
before = set(sys.modules)
ctx = PluginContext(fopc.get_plugin(plugin_dir=sys.argv[1]))
ctx.register_all()
heavy = ("torch", "torchvision", "sklearn", "pymilvus", "grpc", "pandas", "onnxruntime", "cv2")
print(json.dumps({"errors": [str(e) for e in ctx.errors], "operators": len(ctx.instances),
                  "loaded": [m for m in heavy if m in sys.modules and m not in before]}))
"""


def test_plugin_registers_without_heavy_imports(tmp_path):
    """Loading the plugin in the App imports no model, vector-database or image library."""
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "FIFTYONE_DATABASE_DIR": str(tmp_path / "db")}
    out = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE, str(root)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["operators"] >= 10
    assert result["loaded"] == []
