"""Bad input files (tests/badfiles.py): indexing completes, each bad file is reported with its reason,
every good file (odd formats included) is indexed exactly once — library, CNN + Milvus, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from badfiles import KINDS, make_corpus
from helpers import MOBILENET_FILE, TORCH_CACHE
from revsearch import Embedder, PixelFeatures, SearchIndex
from revsearch.cli.display import printable
from revsearch.errors import ImageLoadError
from revsearch.features.decode import load_image
from revsearch.files import list_images

NON_UTF8 = ("non_utf8_name", "non_utf8_name_bad_file")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("robust-inputs") / "corpus")


def _case(corpus, kind):
    if kind in corpus.skipped:
        pytest.skip(corpus.skipped[kind])
    return corpus.by_kind(kind)


def _expected(corpus, exclude=()):
    """(good paths, {bad path: reason substring}) for the files list_images finds."""
    cases = [c for c in corpus.listed if c.kind not in exclude]
    return {c.path for c in cases if c.good}, {c.path: c.reason for c in cases if not c.good}


def _check_no_loss(index, good: set[str]) -> None:
    keys = index.backend.keys()
    assert len(keys) == len(set(keys)) == len(index) == len(good), "duplicated or lost vectors"
    assert set(keys) == good == set(index.items)


def _check_failures(failures: dict[str, str], bad: dict[str, str]) -> None:
    assert set(failures) == set(bad)
    for path, reason in bad.items():
        assert reason in failures[path], (path, failures[path])


def test_listing_finds_each_image_named_entry_once_and_never_loops(corpus):
    found = list_images([corpus.root])
    assert len(found) == len(set(found))
    assert sorted(found) == sorted(c.path for c in corpus.listed)
    assert not any(os.sep + "loop" + os.sep in p for p in found)  # the dir symlink to "." is not followed
    assert corpus.by_kind("text_file").path not in found  # no image extension: not a candidate


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("min_side", [None, 32, 224])
def test_each_kind_decodes_or_is_refused_with_its_reason(corpus, kind, min_side):
    case = _case(corpus, kind)
    if not case.good:
        with pytest.raises(ImageLoadError) as info:
            load_image(case.path, min_side=min_side)
        assert case.reason in info.value.reason
        assert info.value.source == case.path
        return
    image = load_image(case.path, min_side=min_side)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.flags.c_contiguous
    if case.shape:
        assert image.shape[:2] == case.shape  # only big JPEGs are decoded smaller; EXIF rotation applied
    if kind == "rgba_transparency":  # alpha 0 in the first column: composited over white
        assert (image[:, 0] == 255).all()


def test_pixel_index_keeps_every_good_file_and_reports_every_bad_one(corpus, tmp_path):
    good, bad = _expected(corpus)
    text_file = corpus.by_kind("text_file")
    bad[text_file.path] = text_file.reason  # given explicitly, a non-image file is reported too
    paths = list_images([corpus.root]) + [text_file.path]
    index, report = SearchIndex.build(paths, tmp_path / "idx", backend="pixel", progress=False)
    _check_no_loss(index, good)
    _check_failures(report.failures, bad)
    assert sorted(report.added) == sorted(good)
    for path in good:  # each good image (odd formats included) finds itself at distance 0
        hits = index.query(path, k=3)
        assert hits[0].distance == 0 and path in {h.key for h in hits if h.distance == 0}

    reopened = SearchIndex.load(tmp_path / "idx")  # non-UTF-8 / unicode keys survive the manifest
    _check_no_loss(reopened, good)
    _check_failures(reopened.failures, bad)
    again = reopened.sync(paths, progress=False)  # re-run: nothing re-added, bad files reported again
    assert again.added == [] and again.removed == [] and again.unchanged == len(good)
    _check_failures(again.failures, bad)
    _check_no_loss(SearchIndex.load(tmp_path / "idx"), good)


@pytest.mark.skipif(not MOBILENET_FILE.exists(), reason=f"MobileNetV2 weights not found at {MOBILENET_FILE}")
def test_cnn_milvus_index_keeps_every_good_file_and_reports_every_bad_one(corpus, tmp_path):
    # Non-UTF-8 file names cannot be Milvus keys yet: see test_milvus_index_with_a_non_utf8_file_name.
    good, bad = _expected(corpus, exclude=NON_UTF8)
    paths = [c.path for c in corpus.listed if c.kind not in NON_UTF8]
    extractor = Embedder(backbone="mobilenet_v2", weights="IMAGENET1K_V1", batch_size=8)
    index, report = SearchIndex.build(
        paths, tmp_path / "cnn", backend="milvus", extractor=extractor, progress=False, chunk_size=7
    )
    try:
        assert index.reducer is None  # few images: no PCA
        _check_no_loss(index, good)
        _check_failures(report.failures, bad)
        for kind in ("exif_rotated_jpeg", "very_wide", "one_pixel", "animated_webp", "cmyk_jpeg"):
            path = corpus.by_kind(kind).path
            assert index.query(path, k=1)[0].key == path
        again = index.sync(paths, progress=False)
        assert again.added == [] and again.unchanged == len(good)
        _check_no_loss(index, good)
    finally:
        index.backend.close()


def test_milvus_index_with_a_non_utf8_file_name(corpus, tmp_path):
    good = [corpus.by_kind("non_utf8_name").path, corpus.by_kind("unicode_name").path]
    index, report = SearchIndex.build(
        good, tmp_path / "mil", backend="milvus", extractor=PixelFeatures(8), progress=False
    )
    try:
        assert len(index) == 2 and not report.failures  # escaped key: indexed, found, reported by its real name
        assert sorted(index.backend.keys()) == sorted(map(os.path.abspath, good))
        assert index.query(good[0], k=1)[0].key == os.path.abspath(good[0])
    finally:
        index.backend.close()


def _cli(*args, cwd, **env):
    done = subprocess.run(
        [sys.executable, "-m", "revsearch", *args],
        cwd=cwd,
        capture_output=True,
        timeout=300,
        env={**os.environ, "TORCH_HOME": str(TORCH_CACHE), **env},
    )
    # file names are printed as the OS gave them (surrogate escapes become the original bytes)
    return done.returncode, done.stdout.decode("utf-8", "surrogateescape"), done.stderr.decode("utf-8", "replace")


def test_cli_lists_each_bad_file_with_its_reason_and_indexes_the_rest(corpus, tmp_path):
    good, bad = _expected(corpus)
    rc, out, err = _cli("index", str(corpus.root), "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0, err
    assert (
        f"{len(corpus.listed)} image files found: {len(good)} indexed, 0 unchanged, 0 removed, "
        f"{len(bad)} skipped" in out
    )
    skipped = {
        line.split(": ", 1)[0].removeprefix("  skipped "): line.split(": ", 1)[1]
        for line in out.splitlines()
        if line.startswith("  skipped ")
    }
    _check_failures(skipped, {printable(p): r for p, r in bad.items()})  # names are printed escaped
    assert f"({len(good)} vectors, backend exact)" in out
    _check_no_loss(SearchIndex.load(tmp_path / "idx"), good)

    rc, out, err = _cli(
        "index", str(corpus.root), "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path
    )  # re-run: idempotent
    assert rc == 0, err
    assert f"0 indexed, {len(good)} unchanged, 0 removed, {len(bad)} skipped" in out
    _check_no_loss(SearchIndex.load(tmp_path / "idx"), good)
    rc, out, err = _cli("info", "--index-dir", "idx", cwd=tmp_path)
    info = json.loads(out)
    assert rc == 0 and info["vectors"] == len(good) and info["failures"] == len(bad)
    assert info["missing_files"] == info["changed_files"] == 0


def test_cli_prints_a_non_utf8_file_name_on_a_strict_utf8_terminal(corpus, tmp_path):
    bad = corpus.by_kind("non_utf8_name_bad_file").path
    rc, out, err = _cli(
        "index",
        bad,
        corpus.by_kind("grayscale").path,
        "--backend",
        "pixel",
        "--quiet",
        "--index-dir",
        "idx",
        cwd=tmp_path,
        PYTHONIOENCODING="utf-8",
    )
    assert rc == 0, err
    assert "1 indexed" in out and "broken-" in out


def test_cli_given_only_bad_files_fails_clearly_naming_each(corpus, tmp_path):
    """Nothing can be indexed: exit status 2 and one message with every file's reason, no traceback."""
    bad = {c.path: c.reason for c in corpus.bad if c.kind not in ("symlink_loop_dir", "directory_named_like_image")}
    rc, out, err = _cli("index", *bad, "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 2 and "Traceback" not in err, err
    assert f"none of the {len(bad)} files could be indexed" in err
    for reason in bad.values():
        assert reason in err
    assert not (tmp_path / "idx" / "manifest.json").exists()
