"""The command line, run as a user would: index a folder, query, get a mosaic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest

from helpers import MOBILENET_FILE, TORCH_CACHE, write_edited_copy


def _run(*args, cwd):
    env = {**os.environ, "TORCH_HOME": str(TORCH_CACHE)}
    return subprocess.run(
        [sys.executable, "-m", "revsearch", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_index_query_and_mosaic(subset_paths, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for p in subset_paths[:12]:
        shutil.copy(p, images / f"{p.parent.name}_{p.name}")
    (images / "notes.jpg").write_text("not an image")
    backbone = (
        ["--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1"]
        if MOBILENET_FILE.exists()
        else ["--backbone", "resnet18", "--weights", "none"]
    )
    done = _run("index", str(images), "--quiet", *backbone, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "12 indexed" in done.stdout and "1 skipped" in done.stdout and "notes.jpg" in done.stdout
    target = sorted(images.glob("*.jpg"))[0]
    query = write_edited_copy(target, tmp_path / "query.jpg")
    done = _run("query", str(query), "-k", "4", "--out", "result.jpg", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout[: done.stdout.rindex("]") + 1])
    assert len(hits) == 4 and hits[0]["path"] == str(target)
    mosaic = cv2.imread(str(tmp_path / "result.jpg"))
    assert mosaic is not None and mosaic.shape[1] == 5 * 192  # query + 4 hits in one row
    again = _run("index", str(images), "--quiet", cwd=tmp_path)  # re-run: incremental, nothing to do
    assert again.returncode == 0 and "0 indexed, 12 unchanged" in again.stdout


def test_clear_errors(tmp_path):
    done = _run("query", "x.jpg", "--index-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert done.returncode == 2 and "no revsearch index" in done.stderr


def test_features_and_backend_are_chosen_independently(subset_paths, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for p in subset_paths[:6]:
        shutil.copy(p, images / f"{p.parent.name}_{p.name}")
    done = _run(
        "index",
        str(images),
        "--quiet",
        "--features",
        "pixel",
        "--pixel-size",
        "8",
        "--backend",
        "kmeans",
        "--n-clusters",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(_run("info", cwd=tmp_path).stdout)
    assert (info["extractor"]["type"], info["backend"]["kind"], info["vectors"]) == ("pixel", "kmeans", 6)
    target = sorted(images.glob("*.jpg"))[2]
    hits = _run("query", str(target), "-k", "1", "--json", cwd=tmp_path).stdout
    assert json.loads(hits[: hits.rindex("]") + 1])[0]["path"] == str(target)
