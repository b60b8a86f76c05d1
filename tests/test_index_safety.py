"""Bad states an outside probe found: stale checkpoints, corrupt files, other folders, two writers,
relative index dirs, and the command line's errors. Kills at every write point are in
test_crash_safety.py; each case here failed before the fix."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crash_ops import counts, extractor, fresh, index_state, write_image
from revsearch import SearchIndex
from revsearch.errors import IndexBusyError, IndexMismatchError
from revsearch.files import list_images
from revsearch.locks import IndexLock

REPO = Path(__file__).resolve().parents[1]


def _as_from_a_terminal() -> None:
    """In the child: Ctrl-C delivered and handled as in a terminal. A signal that this test process
    ignores or blocks (a library may do so in a full run) would otherwise stay so in the command."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args, cwd, **env):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "revsearch", *args],
        cwd=cwd,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": path, **env},
        timeout=300,
        preexec_fn=_as_from_a_terminal,
    )
    return done.returncode, done.stdout.decode("utf-8", "surrogateescape"), done.stderr.decode("utf-8", "replace")


def _folder(root: Path, names: str = "abcd", seed: int = 0) -> Path:
    root.mkdir(parents=True)
    for i, name in enumerate(names):
        write_image(root / f"{name}.png", seed + i)
    return root


def _build(folder: Path, index_dir: Path, backend: str = "pixel", **options):
    return SearchIndex.build(
        list_images([folder]),
        index_dir,
        backend,
        extractor(),
        pca_dim=None,
        progress=False,
        chunk_size=2,
        roots=[folder],
        **options,
    )


def _point(log: Path, label: str, occurrence: int = 1) -> int:
    """The number of the ``occurrence``-th write point with ``label`` in a REVSEARCH_CRASH_LOG file."""
    hits = [int(line.split()[0]) for line in log.read_text().splitlines() if label in line]
    return hits[occurrence - 1]


_BUILD = "import sys; from crash_ops import build; build(sys.argv[1], sys.argv[2], 'pixel')"


def _run_build(folder: Path, index_dir: Path, **env) -> int:
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", _BUILD, str(folder), str(index_dir)],
        timeout=300,
        env={**os.environ, "PYTHONPATH": path, **env},
    ).returncode


# ---- 3. checkpoints are validated before reuse ----------------------------------------------------
def test_a_file_replaced_after_a_kill_is_embedded_again_from_its_new_content(tmp_path):
    folder, index_dir, log = _folder(tmp_path / "img", "abcdef"), tmp_path / "idx", tmp_path / "log"
    assert _run_build(folder, tmp_path / "counting", REVSEARCH_CRASH_LOG=str(log)) == 0
    second_chunk = _point(log, "checkpoint chunk written", 2)
    assert _run_build(folder, index_dir, REVSEARCH_CRASH_AT=str(second_chunk)) == -signal.SIGKILL
    write_image(folder / "a.png", seed=99)  # a.png was in the first checkpoint chunk
    index, report = _build(folder, index_dir)
    assert report.resumed == 3 and any("changed or gone since" in note for note in report.notes)
    assert counts(index_state(index_dir), fresh(folder)) == {"lost": 0, "stale": 0, "orphaned": 0}


def test_files_fixed_after_an_all_bad_build_are_tried_again(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for name in "ab":
        (folder / f"{name}.png").write_bytes(b"not yet an image")
    with pytest.raises(IndexMismatchError, match="none of the 2 files could be indexed"):
        _build(folder, tmp_path / "idx")
    for i, name in enumerate("ab"):
        write_image(folder / f"{name}.png", seed=i)
    index, report = _build(folder, tmp_path / "idx")
    assert sorted(report.added) == sorted(str(p) for p in folder.iterdir()) and not report.failures


def test_a_checkpoint_of_another_extractor_is_discarded_with_a_note(tmp_path):
    folder, log = _folder(tmp_path / "img", "abcdef"), tmp_path / "log"
    assert _run_build(folder, tmp_path / "counting", REVSEARCH_CRASH_LOG=str(log)) == 0
    assert _run_build(folder, tmp_path / "idx", REVSEARCH_CRASH_AT=str(_point(log, "checkpoint chunk"))) == -9
    from revsearch import PixelFeatures

    index, report = SearchIndex.build(
        list_images([folder]), tmp_path / "idx", "pixel", PixelFeatures(4), pca_dim=None, progress=False
    )
    assert report.resumed == 0 and any("another extractor" in note for note in report.notes)
    assert index.backend.dim == 4 * 4 * 3


# ---- 4. a file that turns corrupt or becomes a directory loses its vector --------------------------
@pytest.mark.parametrize("backend", ["pixel", "milvus"])
def test_a_file_turned_corrupt_or_into_a_directory_is_removed_and_reported(backend, tmp_path):
    folder, index_dir = _folder(tmp_path / "img"), tmp_path / "idx"
    index, _ = _build(folder, index_dir, backend)
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt now")
    (folder / "b.png").unlink()
    (folder / "b.png").mkdir()
    try:
        report = index.sync(list_images([folder]), progress=False)
    finally:
        index.backend.close() if backend == "milvus" else None
    gone = {str(folder / "a.png"), str(folder / "b.png")}
    assert set(report.removed) == gone and set(report.failures) == gone
    assert counts(index_state(index_dir), fresh(folder)) == {"lost": 0, "stale": 0, "orphaned": 0}
    again = SearchIndex.load(index_dir)
    try:
        assert again.stale() == {"missing": [], "changed": []} and gone <= set(again.failures)
    finally:
        again.backend.close() if backend == "milvus" else None


# ---- 5. another folder needs --add or --replace -------------------------------------------------
def test_indexing_another_folder_into_an_index_asks_for_add_or_replace(tmp_path):
    a, b = _folder(tmp_path / "A", "abc"), _folder(tmp_path / "B", "xy", seed=10)
    assert _cli("index", str(a), "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path)[0] == 0
    rc, out, err = _cli("index", str(b), "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 2 and "--add" in err and "--replace" in err and "Traceback" not in err
    assert set(index_state(tmp_path / "idx")) == set(map(str, a.iterdir()))
    rc, out, err = _cli("index", str(b / "x.png"), "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 2 and "--add" in err  # a single file is another folder too

    rc, out, err = _cli("index", str(b), "--add", "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0 and "2 indexed, 0 unchanged, 0 removed" in out, err
    assert set(index_state(tmp_path / "idx")) == set(map(str, [*a.iterdir(), *b.iterdir()]))
    rc, out, err = _cli("index", str(a), str(b), "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0 and "0 indexed, 5 unchanged, 0 removed" in out, err  # the index now covers both

    rc, out, err = _cli("index", str(b), "--replace", "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0 and "0 indexed, 2 unchanged, 3 removed" in out, err
    assert set(index_state(tmp_path / "idx")) == set(map(str, b.iterdir()))


# ---- 6. one writer per index directory ------------------------------------------------------------
def test_a_second_build_into_a_busy_index_dir_is_refused(tmp_path):
    folder, index_dir = _folder(tmp_path / "img"), tmp_path / "idx"
    with IndexLock(index_dir):  # another run is building here (the lock is held while it runs)
        rc, out, err = _cli(
            "index", str(folder), "--backend", "pixel", "--quiet", "--index-dir", str(index_dir), cwd=tmp_path
        )
        assert rc == 2 and "is being updated by process" in err and "Traceback" not in err
        assert not (index_dir / "partial").exists()
    assert (
        _cli("index", str(folder), "--backend", "pixel", "--quiet", "--index-dir", str(index_dir), cwd=tmp_path)[0] == 0
    )


def test_an_index_changed_by_another_run_since_it_was_opened_is_not_overwritten(tmp_path):
    folder, index_dir = _folder(tmp_path / "img"), tmp_path / "idx"
    _build(folder, index_dir)
    first, second = SearchIndex.load(index_dir), SearchIndex.load(index_dir)
    first.remove([str(folder / "a.png")])
    with pytest.raises(IndexBusyError, match="changed by another run since it was opened"):
        second.remove([str(folder / "b.png")])


# ---- 7. a relative index dir is resolved once and stored absolute ------------------------------------
def test_a_relative_index_dir_works_from_any_working_directory(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "img")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    index, _ = _build(folder, Path("rel"), "milvus")
    index.backend.close()
    assert json.loads((tmp_path / "rel" / "manifest.json").read_text())["backend"]["uri"] == str(
        tmp_path / "rel" / "revsearch.db"
    )
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert set(index_state(tmp_path / "rel")) == set(map(str, folder.iterdir()))
    assert list((tmp_path / "elsewhere").iterdir()) == []  # no stray revsearch.db


def test_a_non_ascii_index_dir_name_makes_a_valid_collection_name(tmp_path):
    folder = _folder(tmp_path / "img")
    index, _ = _build(folder, tmp_path / "índice_日本", "milvus")
    index.backend.close()
    assert set(index_state(tmp_path / "índice_日本")) == set(map(str, folder.iterdir()))


# ---- 10. one-line errors, exit 2 ------------------------------------------------------------------
@pytest.fixture
def pixel_index(tmp_path) -> tuple[Path, Path]:
    folder = _folder(tmp_path / "img")
    assert _cli("index", str(folder), "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path)[0] == 0
    return folder, tmp_path / "idx"


def _one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def test_damaged_manifests_are_named_in_one_line(pixel_index, tmp_path):
    folder, index_dir = pixel_index
    manifest = index_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(manifest.read_text()[:200])  # truncated
    for command in (["info"], ["query", str(folder / "a.png")], ["index", str(folder)]):
        rc, _, err = _cli(*command, "--index-dir", "idx", cwd=tmp_path)
        _one_line_error(rc, err, str(manifest), "not valid JSON", "--rebuild")
    del data["items"]
    manifest.write_text(json.dumps(data))
    rc, _, err = _cli("query", str(folder / "a.png"), "--index-dir", "idx", cwd=tmp_path)
    _one_line_error(rc, err, str(manifest), "no items")


def test_an_index_dir_below_a_regular_file_is_one_line(tmp_path):
    folder = _folder(tmp_path / "img")
    (tmp_path / "plain.txt").write_text("x")
    rc, _, err = _cli(
        "index", str(folder), "--backend", "pixel", "--quiet", "--index-dir", "plain.txt/idx", cwd=tmp_path
    )
    _one_line_error(rc, err, "plain.txt")
    rc, _, err = _cli("query", str(folder / "a.png"), "--index-dir", "plain.txt/idx", cwd=tmp_path)
    _one_line_error(rc, err, "no revsearch index")


def test_query_k_and_out_are_checked(pixel_index, tmp_path):
    folder, _ = pixel_index
    for k in ("0", "-1"):
        rc, _, err = _cli("query", str(folder / "a.png"), "-k", k, "--index-dir", "idx", cwd=tmp_path)
        assert rc == 2 and "must be at least 1" in err and "Traceback" not in err
    rc, out, err = _cli("query", str(folder / "a.png"), "-k", "100000", "--json", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0 and len(json.loads(out)) == 4, err  # every indexed image, nearest first
    rc, _, err = _cli(
        "query",
        str(folder / "a.png"),
        "--out",
        str(tmp_path / "no" / "such" / "m.jpg"),
        "--index-dir",
        "idx",
        cwd=tmp_path,
    )
    _one_line_error(rc, err, "--out", "cannot write there")
    with pytest.raises(ValueError, match="k must be a whole number of at least 1"):
        SearchIndex.load(tmp_path / "idx").query(str(folder / "a.png"), k=0)


def test_ctrl_c_exits_130_in_one_line_and_keeps_the_checkpoint(tmp_path):
    folder, log = _folder(tmp_path / "img", "abcdef"), tmp_path / "log"
    args = ["index", str(folder), "--backend", "pixel", "--quiet", "--chunk-size", "2", "--index-dir"]
    assert _cli(*args, "counting", cwd=tmp_path, REVSEARCH_CRASH_LOG=str(log))[0] == 0
    rc, out, err = _cli(
        *args,
        "idx",
        cwd=tmp_path,
        REVSEARCH_CRASH_AT=str(_point(log, "checkpoint chunk")),
        REVSEARCH_CRASH_SIGNAL="INT",
    )
    assert rc == 130 and err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err, err
    assert len(list((tmp_path / "idx" / "partial").glob("chunk_*.npz"))) == 1
    rc, out, err = _cli(*args, "idx", cwd=tmp_path)
    assert rc == 0 and "6 resumed from an interrupted run" in out, err


# ---- 11. printed names cannot forge output; JSON is valid UTF-8 --------------------------------------
def test_control_characters_in_names_are_escaped_and_json_is_utf8(tmp_path):
    folder = _folder(tmp_path / "img", "ab")
    (folder / "evil\n  skipped forged.png").write_bytes(b"not an image")
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    shutil.copy(folder / "a.png", raw)
    rc, out, err = _cli("index", str(folder), "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0, err
    assert not any(line.startswith("  skipped forged") for line in out.splitlines())
    assert "evil\\n  skipped forged.png: not a recognised image format" in out
    done = subprocess.run(
        [sys.executable, "-m", "revsearch", "query", str(folder / "a.png"), "--json", "--index-dir", "idx"],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    hits = json.loads(done.stdout.decode("utf-8"))  # strict UTF-8
    latin = [h for h in hits if "path_bytes_b64" in h]
    assert len(latin) == 1 and base64.b64decode(latin[0]["path_bytes_b64"]) == raw
    assert latin[0]["path"] == str(folder / "caf\ufffd.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_an_unreadable_subfolder_is_reported(tmp_path):
    folder = _folder(tmp_path / "img", "ab")
    hidden = _folder(folder / "locked", "c")
    hidden.chmod(0)
    try:
        rc, out, err = _cli("index", str(folder), "--backend", "pixel", "--quiet", "--index-dir", "idx", cwd=tmp_path)
    finally:
        hidden.chmod(0o755)
    assert rc == 0 and f"skipped {hidden}: cannot read folder: Permission denied" in out, out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_index_still_answers_queries(pixel_index, tmp_path):
    folder, index_dir = pixel_index
    index_dir.chmod(0o555)
    try:
        for command in (["info"], ["query", str(folder / "a.png"), "-k", "1"]):
            rc, out, err = _cli(*command, "--index-dir", "idx", cwd=tmp_path)
            assert rc == 0, err
    finally:
        index_dir.chmod(0o755)


def test_vectors_from_a_file_unchanged_since_the_kill_are_reused(tmp_path):
    """The resumed build keeps checkpointed vectors that are still valid (identical to fresh ones)."""
    folder, index_dir, log = _folder(tmp_path / "img", "abcdef"), tmp_path / "idx", tmp_path / "log"
    assert _run_build(folder, tmp_path / "counting", REVSEARCH_CRASH_LOG=str(log)) == 0
    assert _run_build(folder, index_dir, REVSEARCH_CRASH_AT=str(_point(log, "checkpoint chunk", 3))) == -9
    index, report = _build(folder, index_dir)
    assert report.resumed == 6 and report.notes == []
    state = index_state(index_dir)
    assert all(np.allclose(state[k], v) for k, v in fresh(folder).items())


def test_info_says_when_the_manifest_and_the_store_disagree(pixel_index, tmp_path):
    folder, index_dir = pixel_index
    rc, out, err = _cli("info", "--index-dir", "idx", cwd=tmp_path)
    assert rc == 0 and json.loads(out)["consistent"] is True, err
    manifest = index_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    data["items"][str(folder / "ghost.png")] = {"path": str(folder / "ghost.png"), "signature": [1, 1]}
    manifest.write_text(json.dumps(data))  # damaged by hand: the store has no vector for it
    rc, out, err = _cli("info", "--index-dir", "idx", cwd=tmp_path)
    info = json.loads(out)
    assert rc == 1 and info["consistent"] is False and info["only_in_manifest"] == 1
    assert "the manifest lists 5 files but the vector store holds 4 vectors" in err
