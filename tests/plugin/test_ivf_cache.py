"""An in-memory index loaded from a brain run is kept per process, and dropped when the run changes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from plugin_helpers import make_dataset, subprocess_env
from revsearch.fiftyone import tools


@pytest.fixture
def dataset(caltech_files):
    ds = make_dataset("ivfcache", caltech_files[:20])
    rng = np.random.default_rng(0)
    for sample in ds.iter_samples(autosave=True):
        sample["emb"] = rng.random(16).astype(np.float32)
    tools.build_index(ds, "km", "kmeans", embeddings_field="emb", n_clusters=3, nprobe=3)
    yield ds
    ds.delete()


def test_a_loaded_run_is_kept_and_reused(dataset):
    first = dataset.load_brain_results("km", cache=False)
    again = dataset.load_brain_results("km", cache=False)  # FiftyOne's own cache bypassed
    assert again._handle is first._handle and len(again._handle) == len(dataset)


def test_an_update_in_this_process_is_seen_by_the_next_load(dataset):
    results = dataset.load_brain_results("km", cache=False)
    removed = dataset.values("id")[:5]
    results.remove_from_index(removed)
    results.save()
    again = dataset.load_brain_results("km", cache=False)
    assert len(again._handle) == len(dataset) - 5 and not set(removed) & set(again.sample_ids.tolist())
    query = dataset.values("id")[10]
    assert dataset.sort_by_similarity(query, k=3, brain_key="km").values("id")[0] == query


@pytest.mark.slow
def test_a_change_saved_by_another_process_invalidates_the_cached_index(dataset):
    cached = dataset.load_brain_results("km", cache=False)
    code = (
        "import fiftyone as fo\n"
        f"ds = fo.load_dataset({dataset.name!r})\n"
        "results = ds.load_brain_results('km')\n"
        "results.remove_from_index(ds.values('id')[:7])\n"
        "results.save()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dataset.reload()  # FiftyOne sees another process's run changes after a reload
    fresh = dataset.load_brain_results("km", cache=False)
    assert fresh._handle is not cached._handle and len(fresh._handle) == len(dataset) - 7
