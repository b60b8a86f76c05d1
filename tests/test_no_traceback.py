"""No traceback reaches a user: every command, against every file of an index folder missing, empty,
garbage, truncated or with a flipped byte, and against bad options, ends in one line: exit 0 where the
command can still do its job (``--rebuild``), 2 with an error, 1 only for an inconsistency ``info`` reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import caltech_subset
from revsearch.cli.main import main

#: Pixel features with PCA, alpha-QE / alpha-DBA and thumbnails: every kind of file a generation holds.
OPTIONS = ["--features", "pixel", "--pixel-size", "8", "--pca-dim", "4", "--qe-n", "2", "--dba-n", "2"]
OPTIONS += ["--copy-pixels", "8", "--quiet"]
DAMAGE = ("missing", "empty", "garbage", "truncated", "flipped")


def run(capsys, *args) -> tuple[int, str, str]:
    """``revsearch ARGS`` in this process: exit status, stdout, stderr."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def damage(path: Path, how: str) -> None:
    data = path.read_bytes() if path.exists() else b"{}"
    if how == "missing":
        path.unlink(missing_ok=True)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\xff\x00garbage{,")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped bit near the end, where the numbers are
        flipped = bytearray(data)
        flipped[-3] ^= 0x10
        path.write_bytes(bytes(flipped))


def check_one_line(rc: int, out: str, err: str, command: list[str]) -> None:
    """Exit 0 (or 1 from ``info``) or a one-line error with exit 2; never a traceback or an unexpected error."""
    assert "Traceback" not in out + err, (command, err)
    if rc == 0:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    if rc == 1:
        assert command[0] == "info" and len(lines) == 1 and "rebuild" in lines[0], (command, err)
        return
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("revsearch: error:"), (command, rc, err)
    assert "unexpected" not in lines[0], (command, err)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("img")
    for p in caltech_subset()[:6]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    return folder


@pytest.fixture(scope="module")
def exact_index(images, tmp_path_factory) -> Path:
    """An exact index of the six images, built once; each case works on a copy."""
    index_dir = tmp_path_factory.mktemp("base") / "idx"
    assert main(["index", str(images), "--backend", "exact", "--index-dir", str(index_dir), *OPTIONS]) == 0
    return index_dir


def commands(images: Path, kind: str) -> list[list]:
    query = sorted(images.iterdir())[0]
    return [
        ["info"],
        ["query", query, "-k", "3"],
        ["query", query, "--mode", "copy", "--json"],
        ["index", images, "--quiet"],
        ["move", "--uri", images.parent / "elsewhere.db", "--quiet"],
        ["index", images, "--rebuild", "--backend", kind, *OPTIONS],  # last: it repairs the index
    ]


def index_files(index_dir: Path) -> list[str]:
    names = [p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*") if p.is_file()]
    return sorted(n for n in names if not n.endswith(".lock")) + ["pending.json", "journal.npz"]


def test_the_base_index_has_every_kind_of_file(exact_index):
    names = set(index_files(exact_index))
    assert {"manifest.json", "gen-1/vectors.npy", "gen-1/pca.json", "gen-1/dba.npz"} <= names
    assert "gen-1/thumbnails/vectors.npy" in names


@pytest.mark.parametrize("how", DAMAGE)
def test_every_command_on_every_damaged_file_ends_in_one_line(how, exact_index, images, tmp_path, capsys):
    query = sorted(images.iterdir())[0]
    for n, name in enumerate(index_files(exact_index)):
        if name in ("pending.json", "journal.npz") and how in ("missing", "truncated", "flipped"):
            continue  # records that exist only after a crash: only their garbage forms apply
        for m, command in enumerate(commands(images, "exact")):
            case = tmp_path / f"{n}-{m}"
            shutil.copytree(exact_index, case)
            damage(case / name, how)
            rc, out, err = run(capsys, *command, "--index-dir", case)
            check_one_line(rc, out, err, command)
            if "--rebuild" in command:
                assert rc == 0, (name, err)
                rc, out, err = run(capsys, "query", query, "-k", "1", "--json", "--index-dir", case)
                assert rc == 0 and json.loads(out)[0]["path"] == str(query), (name, how, err)


def test_a_flipped_byte_in_stored_vectors_is_refused_by_name_with_the_fix(exact_index, images, tmp_path, capsys):
    case = tmp_path / "idx"
    shutil.copytree(exact_index, case)
    damage(case / "gen-1" / "vectors.npy", "flipped")
    for command in (["info"], ["query", sorted(images.iterdir())[0]], ["index", images, "--quiet"]):
        rc, out, err = run(capsys, *command, "--index-dir", case)
        assert rc == 2 and err.count("\n") == 1, err
        assert str(case / "gen-1" / "vectors.npy") in err and "checksum" in err
        assert "revsearch index FOLDER --rebuild" in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["index"],
        ["index", "{images}", "--backend", "bogus"],
        ["index", "{tmp}/no-such-folder", "--quiet"],
        ["query"],
        ["query", "{tmp}/no-such.jpg"],
        ["query", "{tmp}/notes.jpg"],
        ["query", "{query}", "--out", "{tmp}/x.gif"],
        ["query", "{query}", "--out", "{tmp}/no-such-folder/x.jpg"],
        ["query", "{query}", "--mode", "bogus"],
        ["query", "ftp://example.com/x.jpg"],
        ["query", "http://127.0.0.1:9/x.jpg"],
        ["move", "--uri", "{tmp}/other.db"],  # an exact index cannot move to Milvus
        ["info", "--bogus"],
    ],
)
def test_bad_arguments_end_in_one_line(args, exact_index, images, tmp_path, capsys):
    case = tmp_path / "idx"
    shutil.copytree(exact_index, case)
    (tmp_path / "notes.jpg").write_text("not an image")
    values = {"images": images, "tmp": tmp_path, "query": sorted(images.iterdir())[0]}
    args = [a.format(**values) for a in args]
    index_dir = ["--index-dir", case] if args and args[0] in ("index", "query", "info", "move") else []
    rc, out, err = run(capsys, *args, *index_dir)
    check_one_line(rc, out, err, args or [""])
    assert rc == 2, err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "missing", "empty", "garbage"])
def test_milvus_lite_file_damaged(how, images, tmp_path, capsys):
    """A Lite index whose .db is damaged: queries name the file, ``--rebuild`` moves it aside and recovers."""
    index_dir = tmp_path / "idx"
    # built in another process: its Lite server stops with it, as after any command
    build = [sys.executable, "-m", "revsearch", "index", images, "--backend", "milvus", "--index-dir", index_dir]
    subprocess.run([str(a) for a in build + OPTIONS], check=True, capture_output=True, timeout=300)
    db = index_dir / "revsearch.db"
    damage(db, how)
    query = sorted(images.iterdir())[0]
    for command in commands(images, "milvus"):
        rc, out, err = run(capsys, *command, "--index-dir", index_dir)
        check_one_line(rc, out, err, command)
        if command[0] in ("info", "query"):
            assert rc == 2 and str(db) in err and "--rebuild" in err, err
    assert rc == 0, err  # the rebuild
    rc, out, err = run(capsys, "query", query, "-k", "1", "--json", "--index-dir", index_dir)
    assert rc == 0 and json.loads(out)[0]["path"] == str(query), err
