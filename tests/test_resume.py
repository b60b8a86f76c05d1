"""Interrupted runs: kill -9 while indexing, re-run, and nothing is lost or duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from helpers import MOBILENET_FILE, TORCH_CACHE
from revsearch import SearchIndex


def _index_cmd(images, index_dir):
    backbone = (
        ["--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1"]
        if MOBILENET_FILE.exists()
        else ["--backbone", "resnet18", "--weights", "none"]
    )
    return [
        sys.executable,
        "-m",
        "revsearch",
        "index",
        str(images),
        "--index-dir",
        str(index_dir),
        "--quiet",
        "--chunk-size",
        "4",
        "--batch-size",
        "2",
        "--backend",
        "milvus",
        *backbone,
    ]


def test_kill_during_indexing_then_resume(subset_paths, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in subset_paths:
        shutil.copy(p, images / f"{p.parent.name}_{p.name}")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    index_dir = tmp_path / "idx"
    env = {**os.environ, "TORCH_HOME": str(TORCH_CACHE)}
    proc = subprocess.Popen(_index_cmd(images, index_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list((index_dir / "partial").glob("chunk_*.npz"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (index_dir / "manifest.json").exists()

    done = subprocess.run(_index_cmd(images, index_dir), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from an interrupted run" in done.stdout
    index = SearchIndex.load(index_dir)
    expected = sorted(str(p) for p in images.glob("*.jpg") if p.name != "broken.jpg")
    keys = index.backend.keys()
    assert sorted(keys) == expected and len(keys) == len(set(keys)) == len(index)
    assert list(index.failures) == [str(images / "broken.jpg")]
    assert not (index_dir / "partial").exists()


_CRASH_DURING_INSERT = """
import os, sys
from revsearch import MilvusIndex, PixelFeatures, SearchIndex
from revsearch.files import list_images
original = MilvusIndex.add
def add_then_die(self, keys, vectors):
    original(self, keys, vectors)
    os._exit(9)  # the process dies right after its first insert reached Milvus, like kill -9
MilvusIndex.add = add_then_die
SearchIndex.build(list_images([sys.argv[1]]), sys.argv[2], "milvus", PixelFeatures(16, batch_size=5), pca_dim=None,
                  progress=False, chunk_size=5)
"""


def test_crash_while_inserting_into_milvus_then_rerun(subset_paths, tmp_path):
    """Dying between Milvus inserts leaves a partial collection; the re-run ends with each file once."""
    images = tmp_path / "images"
    images.mkdir()
    for p in subset_paths:
        shutil.copy(p, images / f"{p.parent.name}_{p.name}")
    index_dir = tmp_path / "idx"
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH_DURING_INSERT, str(images), str(index_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 9, crashed.stderr
    assert not (index_dir / "manifest.json").exists()
    assert len(list((index_dir / "partial").glob("chunk_*.npz"))) == 5  # 24 files in chunks of 5

    from revsearch import PixelFeatures
    from revsearch.files import list_images

    index, report = SearchIndex.build(
        list_images([images]),
        index_dir,
        "milvus",
        PixelFeatures(16, batch_size=5),
        pca_dim=None,
        progress=False,
        chunk_size=5,
    )
    assert report.resumed == len(subset_paths)  # nothing re-embedded
    keys = index.backend.keys()
    assert sorted(keys) == sorted(str(p) for p in images.iterdir()) and len(keys) == len(set(keys)) == len(index)
    index.backend.close()
