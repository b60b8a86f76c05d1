"""Bad input files in a FiftyOne dataset: operators complete, list each failure by sample id, mark the
sample (tag ``revsearch:failed`` + field ``revsearch_error``), and index every good sample exactly once.

File names that are not valid UTF-8 are left out: MongoDB (hence FiftyOne) cannot store such a
filepath at all (``test_fiftyone_cannot_store_a_non_utf8_filepath`` shows it), so no sample can exist.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

import helpers  # noqa: F401  (sets TORCH_HOME before FiftyOne / torchvision are used)
from badfiles import make_corpus

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")

from revsearch import PixelFeatures  # noqa: E402
from revsearch.fiftyone import tools  # noqa: E402
from revsearch.fiftyone.tools import ERROR_FIELD, FAILED_TAG  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
URI = "@revsearch/revsearch/"
NON_UTF8 = ("non_utf8_name", "non_utf8_name_bad_file")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("robust-fo") / "corpus")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """This repository as a FiftyOne plugin (plugins dir restored afterwards)."""
    root = tmp_path_factory.mktemp("robust-fo-plugins")
    (root / "revsearch").symlink_to(REPO)
    before = (fo.config.plugins_dir, os.environ.get("FIFTYONE_PLUGINS_DIR"))
    fo.config.plugins_dir = str(root)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)
    yield root
    fo.config.plugins_dir = before[0]
    if before[1] is None:
        os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
    else:
        os.environ["FIFTYONE_PLUGINS_DIR"] = before[1]


@pytest.fixture(scope="module")
def dataset(corpus):
    ds = fo.Dataset(f"robust-{uuid.uuid4().hex[:10]}")
    ds.add_samples([fo.Sample(filepath=c.path, kind=c.kind) for c in corpus.listed if c.kind not in NON_UTF8])
    yield ds
    ds.delete()


def _expected(dataset, corpus):
    """(good sample ids, {bad sample id: reason substring})."""
    by_kind = dict(zip(dataset.values("kind"), dataset.values("id")))
    cases = [c for c in corpus.listed if c.kind not in NON_UTF8]
    return ({by_kind[c.kind] for c in cases if c.good}, {by_kind[c.kind]: c.reason for c in cases if not c.good})


def _run(dataset, name, **params):
    result = foo.execute_operator(URI + name, ctx={"dataset": dataset, "view": dataset.view(), "params": params})
    result.raise_exceptions()
    return result.result


def _check_marks(dataset, good, bad):
    assert dataset.count_sample_tags() == ({FAILED_TAG: len(bad)} if bad else {})
    assert set(dataset.match_tags(FAILED_TAG).values("id")) == set(bad)
    errors = dict(zip(dataset.values("id"), dataset.values(ERROR_FIELD)))
    for sample_id, reason in bad.items():
        assert reason in errors[sample_id]
    assert all(errors[i] is None for i in good)


def _check_reported(out, bad):
    """The operator's output lists every bad sample with its reason."""
    assert set(out["failures"]) == set(bad)
    for sample_id, reason in bad.items():
        assert reason in out["failures"][sample_id]


def _check_index(results, good):
    ids = results.sample_ids.tolist()
    assert len(ids) == len(set(ids)) == results.total_index_size == len(good)
    assert set(ids) == good


def test_fiftyone_cannot_store_a_non_utf8_filepath(corpus):
    """Why the non-UTF-8 kinds are not in the dataset: the database refuses the sample itself."""
    ds = fo.Dataset(f"robust-utf8-{uuid.uuid4().hex[:10]}")
    try:
        with pytest.raises(UnicodeEncodeError):
            ds.add_sample(fo.Sample(filepath=corpus.by_kind("non_utf8_name").path))
        assert len(ds) == 0
    finally:
        ds.delete()


def test_compute_embeddings_operator_lists_and_marks_each_failure(dataset, corpus, plugin):
    good, bad = _expected(dataset, corpus)
    out = _run(dataset, "compute_embeddings", embeddings_field="pix", features="pixel")
    assert out["embedded"] == len(good)
    _check_reported(out, bad)
    assert set(dataset.exists("pix").values("id")) == good
    _check_marks(dataset, good, bad)


def test_build_index_operator_indexes_every_good_sample_once(dataset, corpus, plugin):
    good, bad = _expected(dataset, corpus)
    out = _run(dataset, "build_index", brain_key="robust_pixel", index_kind="exact", features="pixel")
    assert out["indexed"] == len(good)
    _check_reported(out, bad)
    _check_marks(dataset, good, bad)
    results = dataset.load_brain_results("robust_pixel")
    _check_index(results, good)
    for kind in ("exif_rotated_jpeg", "animated_webp", "very_wide", "unicode_name"):  # odd files are searchable
        sample = dataset.match({"kind": kind}).first()
        view = tools.query_view(results, dataset, sample.filepath, k=1)
        assert view.first().id == sample.id
    status = _run(dataset, "inspect_index", brain_key="robust_pixel")
    assert status["indexed"] == len(good) and status["not_indexed"] == len(bad)  # failures stay visible


def test_milvus_index_with_bad_files_then_a_fixed_file_is_picked_up(dataset, corpus, tmp_path):
    good, bad = _expected(dataset, corpus)
    uri = str(tmp_path / "robust.db")
    results, failures = tools.build_index(dataset, "robust_milvus", "milvus", extractor=PixelFeatures(8), uri=uri)
    try:
        assert set(failures) == set(bad)
        _check_index(results, good)
        _check_marks(dataset, good, bad)
        again = tools.sync_index(results)  # re-run: bad files tried again, nothing duplicated
        assert again["added"] == 0 and again["removed"] == 0 and set(again["failures"]) == set(bad)
        _check_index(results, good)

        fixed = corpus.by_kind("truncated_jpeg")  # the user repairs one file
        os.remove(fixed.path)
        shutil.copy(corpus.by_kind("grayscale_jpeg").path, fixed.path)
        fixed_id = dataset.match({"kind": "truncated_jpeg"}).first().id
        out = tools.sync_index(results)
        assert out["added"] == 1 and fixed_id not in out["failures"]
        good, bad = good | {fixed_id}, {k: v for k, v in bad.items() if k != fixed_id}
        _check_index(results, good)
        _check_marks(dataset, good, bad)  # tag and error cleared on the repaired sample
        reloaded = dataset.load_brain_results("robust_milvus")  # a fresh handle answers the same
        _check_index(reloaded, good)
    finally:
        dataset.delete_brain_run("robust_milvus")  # drops the Milvus collection
