"""A brain run's large arrays live beside its results JSON (GridFS, content-addressed) and are
memory-mapped from a local cache; clones share them, and an array goes only when no run lists it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import fiftyone.brain as fob
import numpy as np
import pytest
from fiftyone.core.brain import BrainMethod

import revsearch.fiftyone.brain  # noqa: F401  (registers backend="revsearch")
from plugin_helpers import make_dataset, subprocess_env
from revsearch.fiftyone import index_cache, run_store

DIM = 8


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch, tmp_path):
    """Store arrays of this tiny dataset beside the results, as 1M vectors would be; a private cache."""
    monkeypatch.setattr(run_store, "INLINE_BYTES", 64)
    monkeypatch.setattr(run_store, "INLINE_KEYS", 4)
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def dataset(caltech_files):
    ds = make_dataset("runarrays", caltech_files[:20])
    yield ds
    if ds.name in __import__("fiftyone").list_datasets():
        ds.delete()


def build(ds, key: str, kind: str) -> np.ndarray:
    rng = np.random.default_rng(list(ds.name.encode()))  # arrays no concurrent test run stores too
    vectors = rng.normal(size=(len(ds), DIM)).astype(np.float32)
    options = {"n_clusters": 3, "nprobe": 3} if kind == "kmeans" else {}
    fob.compute_similarity(ds, embeddings=vectors, brain_key=key, backend="revsearch", index_kind=kind, **options)
    return vectors


def raw_results(ds, key: str) -> tuple[str, dict]:
    doc = BrainMethod._get_run_doc(ds, key)
    doc.results.seek(0)
    return doc.results.read().decode(), dict(doc.results_meta or {})


def stored_names() -> set[str]:
    return {doc["filename"] for doc in run_store._db()[f"{run_store.BUCKET}.files"].find({}, {"filename": 1})}


def fresh_load(ds, key: str):
    """The run as a fresh process would load it (neither FiftyOne's nor our process cache)."""
    index_cache.forget(ds, key)
    return ds.load_brain_results(key, cache=False)


def top_ids(results, queries: np.ndarray, k: int = 5) -> list[list[str]]:
    return [[h.key for h in row] for row in results.search(queries, k)]


@pytest.mark.parametrize("kind", ["kmeans", "exact"])
def test_large_arrays_are_stored_beside_the_results_and_reload_identically(dataset, kind):
    vectors = build(dataset, "rev", kind)
    text, meta = raw_results(dataset, "rev")
    names = meta[run_store.META_FIELD]
    assert names and set(names) <= stored_names()
    assert text.count("$revsearch_array") == len(names)
    assert all(name in text for name in names)
    queries = vectors[:4] + 0.01
    before = top_ids(dataset.load_brain_results("rev"), queries)
    shutil.rmtree(run_store.cache_dir())  # a machine that never saw the arrays: fetched from the database
    again = fresh_load(dataset, "rev")
    assert top_ids(again, queries) == before
    assert sorted(p.stem for p in run_store.cache_dir().glob("*.npy")) == sorted(set(names))
    np.testing.assert_array_equal(again.get_embeddings(sample_ids=dataset.values("id")[:3])[0], vectors[:3])


@pytest.mark.slow
def test_a_fresh_process_answers_as_the_saving_process(dataset):
    vectors = build(dataset, "rev", "kmeans")
    query = vectors[7] + 0.01
    expected = dataset.sort_by_similarity(query, k=5, brain_key="rev").values("id")
    code = (
        "import json, sys, numpy as np, fiftyone as fo\n"
        f"ds = fo.load_dataset({dataset.name!r})\n"
        "q = np.array(json.loads(sys.argv[1]), dtype=np.float32)\n"
        "print(json.dumps(ds.sort_by_similarity(q, k=5, brain_key='rev').values('id')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(query.tolist())],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_a_clone_keeps_its_arrays_after_the_original_run_is_deleted(dataset):
    vectors = build(dataset, "rev", "kmeans")
    names = set(raw_results(dataset, "rev")[1][run_store.META_FIELD])
    clone = dataset.clone()
    try:
        queries = vectors[:3] + 0.01
        expected = top_ids(dataset.load_brain_results("rev"), queries)
        dataset.delete_brain_run("rev")
        assert names <= stored_names()  # the clone still lists them
        shutil.rmtree(run_store.cache_dir())
        assert top_ids(fresh_load(clone, "rev"), queries) == expected
        clone.delete_brain_run("rev")
        assert not names & stored_names()  # no run lists them any more
    finally:
        clone.delete()


def test_an_update_replaces_the_stored_arrays_and_deletes_the_old_ones(dataset):
    build(dataset, "rev", "kmeans")
    old = set(raw_results(dataset, "rev")[1][run_store.META_FIELD])
    results = dataset.load_brain_results("rev")
    removed = dataset.values("id")[:5]
    results.remove_from_index(removed)
    results.save()
    new = set(raw_results(dataset, "rev")[1][run_store.META_FIELD])
    assert new <= stored_names()
    gone = old - new
    assert gone and not gone & stored_names()
    assert not {p.stem for p in run_store.cache_dir().glob("*.npy")} & gone
    again = fresh_load(dataset, "rev")
    assert len(again.sample_ids) == len(dataset) - 5 and not set(removed) & set(again.sample_ids.tolist())


def test_printing_or_serialising_results_stores_nothing(dataset):
    """Getters are pure: only a save stores arrays, those an unsaved change's JSON already names."""
    build(dataset, "rev", "kmeans")
    results = fresh_load(dataset, "rev")

    def written() -> tuple:
        return run_store.RunStore.version(dataset, "rev"), stored_names(), set(run_store.cache_dir().iterdir())

    before = written()
    assert str(results) and results.serialize() and written() == before
    results.remove_from_index(dataset.values("id")[:5])
    d, meta = results.serialize(), results.get_meta()
    assert str(results) and written() == before
    results.save()
    text, saved_meta = raw_results(dataset, "rev")
    assert json.loads(text)["index_state"] == json.loads(json.dumps(d["index_state"])) and saved_meta == meta


def test_storing_the_same_array_twice_keeps_one_copy(dataset):
    array = np.arange(100, dtype=np.float32).reshape(25, 4)
    first, second = run_store.put(array), run_store.put(array.copy())
    try:
        assert first == second
        assert run_store._db()[f"{run_store.BUCKET}.files"].count_documents({"filename": first}) == 1
        np.testing.assert_array_equal(run_store.load(first), array)
    finally:
        run_store.collect_garbage([first])


def test_a_damaged_cache_file_is_fetched_again(dataset):
    vectors = build(dataset, "rev", "exact")
    names = raw_results(dataset, "rev")[1][run_store.META_FIELD]
    for name in names:
        path = run_store.cache_dir() / f"{name}.npy"
        path.write_bytes(path.read_bytes()[:20])  # truncated
    queries = vectors[:2] + 0.01
    assert [row[0] for row in top_ids(fresh_load(dataset, "rev"), queries)] == dataset.values("id")[:2]


def test_a_missing_array_gives_a_clear_error(dataset):
    build(dataset, "rev", "exact")
    name = raw_results(dataset, "rev")[1][run_store.META_FIELD][0]
    bucket = run_store._bucket()
    for doc in bucket.find({"filename": name}):
        bucket.delete(doc._id)
    shutil.rmtree(run_store.cache_dir())
    with pytest.raises(run_store.MissingRunArrayError, match="re-run compute_similarity"):
        fresh_load(dataset, "rev")


def test_arrays_of_a_deleted_dataset_are_collected_after_the_grace_period(dataset, monkeypatch):
    build(dataset, "rev", "kmeans")
    names = set(raw_results(dataset, "rev")[1][run_store.META_FIELD])
    dataset.delete()  # FiftyOne deletes the run documents without calling the backend
    assert names <= stored_names()
    assert not names & set(run_store.collect_garbage())  # younger than the grace period: kept
    monkeypatch.setattr(run_store, "GRACE_S", 0.0)
    assert names <= set(run_store.collect_garbage())
    assert not names & stored_names()


UPDATE = """
import sys
import fiftyone as fo
from revsearch.fiftyone import run_store
run_store.INLINE_BYTES, run_store.INLINE_KEYS = 64, 4
ds = fo.load_dataset(sys.argv[1])
results = ds.load_brain_results("rev")
results.remove_from_index(ds.values("id")[:5])
results.save()
"""


def run_update(ds, env: dict) -> int:
    done = subprocess.run([sys.executable, "-c", UPDATE, ds.name], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode in (0, -9), done.stderr[-3000:]
    return done.returncode


@pytest.mark.slow
def test_a_kill_at_every_write_point_of_an_update_loses_nothing_and_leaks_nothing(dataset, tmp_path, monkeypatch):
    """Killed anywhere in ``remove_from_index`` + ``save``, the run loads (in a fresh process, from a
    cold cache) and answers as before or after; after the grace period no unlisted array is left."""
    vectors = build(dataset, "rev", "kmeans")
    ids = dataset.values("id")
    log = tmp_path / "points"
    env = {**subprocess_env(), "REVSEARCH_CACHE": str(run_store.cache_dir().parent), "REVSEARCH_CRASH_LOG": str(log)}
    assert run_update(dataset, env) == 0
    labels = log.read_text().splitlines()
    assert any("run array stored" in p for p in labels) and any("brain run saved" in p for p in labels)
    monkeypatch.setattr(run_store, "GRACE_S", 0.0)
    for point in range(1, len(labels) + 1):
        dataset.delete_brain_run("rev")
        build(dataset, "rev", "kmeans")
        crash_env = {k: v for k, v in env.items() if k != "REVSEARCH_CRASH_LOG"}
        assert run_update(dataset, {**crash_env, "REVSEARCH_CRASH_AT": str(point)}) == -9, labels[point - 1]
        dataset.reload()
        shutil.rmtree(run_store.cache_dir(), ignore_errors=True)
        results = fresh_load(dataset, "rev")
        kept = set(results.sample_ids.tolist())
        assert kept in (set(ids), set(ids[5:])), labels[point - 1]
        assert [row[0] for row in top_ids(results, vectors[5:8] + 0.001)] == ids[5:8]
        run_store.collect_garbage()
        listed = set(raw_results(dataset, "rev")[1][run_store.META_FIELD])
        assert listed <= stored_names(), labels[point - 1]  # nothing the run needs was deleted
        assert not stored_names() - run_store.referenced(), labels[point - 1]  # nothing unlisted is left
        assert set(fresh_load(dataset, "rev").sample_ids.tolist()) == kept


def test_the_dba_graph_and_thumbnails_are_stored_beside_the_results_too(dataset):
    from revsearch.fiftyone import tools

    vectors = np.random.default_rng(3).normal(size=(len(dataset), DIM)).astype(np.float32)
    dataset.set_values("emb", list(vectors))
    results, _ = tools.build_index(dataset, "rev", "exact", embeddings_field="emb", dba_n=2, copy_pixels=8)
    text, meta = raw_results(dataset, "rev")
    retrieval = json.loads(text)["retrieval_state"]
    assert "$revsearch_array" in json.dumps(retrieval["dba"]) and "$revsearch_array" in json.dumps(retrieval["pixels"])
    assert set(run_store.names_in(retrieval)) <= set(meta[run_store.META_FIELD])
    expected = [[(h.key, h.distance) for h in row] for row in results.copy_neighbours(3)]
    shutil.rmtree(run_store.cache_dir())
    again = fresh_load(dataset, "rev")
    assert [[(h.key, h.distance) for h in row] for row in again.copy_neighbours(3)] == expected
    np.testing.assert_array_equal(again._extras.dba.augmented(), results._extras.dba.augmented())


def test_chunks_of_an_upload_that_never_finished_are_collected_after_the_grace_period():
    from datetime import datetime, timedelta, timezone

    from bson import Binary, ObjectId

    chunks = run_store._db()[f"{run_store.BUCKET}.chunks"]
    old = ObjectId.from_datetime(datetime.now(timezone.utc) - timedelta(seconds=2 * run_store.GRACE_S))
    recent = ObjectId()  # an upload in progress in another process
    chunks.insert_many([{"files_id": file_id, "n": 0, "data": Binary(b"x")} for file_id in (old, recent)])
    try:
        run_store.collect_garbage()
        assert chunks.count_documents({"files_id": old}) == 0
        assert chunks.count_documents({"files_id": recent}) == 1
    finally:
        chunks.delete_many({"files_id": {"$in": [old, recent]}})
