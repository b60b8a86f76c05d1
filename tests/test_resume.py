"""Interrupted runs: kill -9 while indexing, re-run, and nothing is lost or duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from revsearch import SearchIndex

from helpers import MOBILENET_FILE, TORCH_CACHE


def _index_cmd(images, index_dir):
    backbone = ["--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1"] if MOBILENET_FILE.exists() \
        else ["--backbone", "resnet18", "--weights", "none"]
    return [sys.executable, "-m", "revsearch", "index", str(images), "--index-dir", str(index_dir), "--quiet",
            "--chunk-size", "4", "--batch-size", "2", "--backend", "milvus", *backbone]


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
