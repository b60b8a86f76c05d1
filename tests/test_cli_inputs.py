"""What an outside probe of the command line found: out-of-range numbers, a URL fetched twice, a
16-bit PNG past the decode budget, damaged index files named nowhere, a silently finished update.
Each case runs ``revsearch`` as a user would (in this process, for speed, unless it must be killed)
and checks the exit status, a one-line error and that the index directory is left as it was."""

from __future__ import annotations

import http.server
import os
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from crash_ops import write_image
from revsearch.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *args) -> tuple[int, str, str]:
    """``revsearch ARGS``: exit status, stdout, stderr."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and err.startswith("revsearch: error:"), err
    for word in words:
        assert word in err, err


def _files(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` with its bytes (the lock file's holder line aside)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def indexed(tmp_path, capsys) -> tuple[Path, Path]:
    """Four tiny images indexed with pixel features: (folder, index dir)."""
    folder, index_dir = tmp_path / "img", tmp_path / "idx"
    folder.mkdir()
    for i, name in enumerate("abcd"):
        write_image(folder / f"{name}.png", i)
    assert _run(capsys, "index", folder, "--backend", "pixel", "--quiet", "--index-dir", index_dir)[0] == 0
    return folder, index_dir


# ---- numeric options are checked before anything is read or written --------------------------------
@pytest.mark.parametrize(
    "options, words",
    [
        (["--image-size", "0"], ["--image-size", "at least 32"]),
        (["--image-size", "100000"], ["--image-size", "at most 4096"]),
        (["--image-size", "2048", "--scales", "1,4"], ["8192-pixel input"]),
        (["--batch-size", "0"], ["--batch-size", "at least 1"]),
        (["--chunk-size", "0"], ["--chunk-size", "at least 1"]),
        (["--chunk-size", "1.5"], ["--chunk-size", "whole number"]),
        (["--pixel-size", "0"], ["--pixel-size"]),
        (["--pixel-size", "100000"], ["--pixel-size", "at most 256"]),
        (["--qe-n", "-1"], ["--qe-n"]),
        (["--dba-n", "1000000"], ["--dba-n"]),
        (["--copy-pixels", "100000"], ["--copy-pixels"]),
        (["--n-clusters", "0"], ["--n-clusters"]),
        (["--nprobe", "0"], ["--nprobe"]),
        (["--scales", "0"], ["scales must be"]),
        (["--scales", "1,1"], ["scales must be"]),
        (["--pca-dim", "-1"], ["--pca-dim"]),
        (["--pca-dim", "100"], ["pca_dim must be at most 4"]),  # 4 images
        (["--backend", "kmeans", "--n-clusters", "10"], ["n_clusters must be at most 4"]),
    ],
)
def test_out_of_range_numbers_are_refused_before_the_index_dir_is_touched(options, words, tmp_path, capsys):
    folder = tmp_path / "img"
    folder.mkdir()
    for i, name in enumerate("abcd"):
        write_image(folder / f"{name}.png", i)
    pixels = ["--features", "pixel", "--backend", "exact", "--quiet"]
    rc, _, err = _run(capsys, "index", folder, *pixels, "--index-dir", tmp_path / "idx", *options)
    _one_line_error(rc, err, *words)
    assert not (tmp_path / "idx").exists()


def test_query_k_is_checked(indexed, capsys):
    folder, index_dir = indexed
    for k in ("0", "x"):
        rc, _, err = _run(capsys, "query", folder / "a.png", "-k", k, "--index-dir", index_dir)
        _one_line_error(rc, err, "-k")


# ---- a URL query is fetched once -------------------------------------------------------------------
class _OnceHandler(http.server.BaseHTTPRequestHandler):
    """Serves the image once; any later request fails (as a slow or flaky server would)."""

    image, served = b"", 0

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).served += 1
        body = self.image if self.served == 1 else b"gone"
        self.send_response(200 if self.served == 1 else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_url_query_with_a_mosaic_fetches_the_url_once(indexed, tmp_path, capsys):
    folder, index_dir = indexed
    _OnceHandler.image, _OnceHandler.served = (folder / "b.png").read_bytes(), 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OnceHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/b.png"
        args = ["query", url, "-k", "2", "--allow-private-urls", "--out", tmp_path / "m.png", "--index-dir", index_dir]
        rc, out, err = _run(capsys, *args)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert rc == 0 and _OnceHandler.served == 1, err
    assert str(folder / "b.png") in out.splitlines()[0] and (tmp_path / "m.png").stat().st_size > 0


# ---- a 16-bit PNG counts 2 bytes a sample against the decode budget ----------------------------------
def _png_header(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG whose IHDR declares the size and depth, with a few bytes of (invalid) pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 16) + chunk(b"IEND", b"")


def test_a_16_bit_png_over_the_budget_is_refused_from_its_header(indexed, tmp_path, capsys):
    folder, index_dir = indexed
    query = tmp_path / "huge16.png"
    query.write_bytes(_png_header(14000, 14000, 16, 6))  # RGBA: 1,495 MiB decoded, 748 MiB at 8 bits
    before = _files(index_dir)
    rc, _, err = _run(capsys, "query", query, "--index-dir", index_dir)
    _one_line_error(rc, err, str(query), "(1495 MiB) exceeds the 1024 MiB memory budget")
    assert _files(index_dir) == before


# ---- damaged index files are named, with the fix ---------------------------------------------------
@pytest.mark.parametrize("name", ["manifest.json", "journal.npz", "pending.json"])
def test_a_damaged_index_file_is_named_with_the_fix(name, indexed, capsys):
    folder, index_dir = indexed
    for content in (b"", b"\xff\x00garbage{,", b'{"generation": 1 "new": null}'):
        (index_dir / name).write_bytes(content)
        before = _files(index_dir)
        for command in (["info"], ["query", folder / "a.png"], ["index", folder, "--quiet"]):
            rc, _, err = _run(capsys, *command, "--index-dir", index_dir)
            _one_line_error(rc, err, str(index_dir / name), "is damaged", "revsearch index FOLDER --rebuild")
            assert _files(index_dir) == before


# ---- a re-run that finishes an interrupted update says so ------------------------------------------
def test_finishing_an_interrupted_update_is_reported(indexed, tmp_path, capsys):
    folder, index_dir = indexed
    (folder / "a.png").unlink()
    write_image(folder / "e.png", 9)
    command = [sys.executable, "-m", "revsearch", "index", str(folder), "--quiet", "--index-dir"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    shutil.copytree(index_dir, tmp_path / "counting")
    log = tmp_path / "log"
    counting = [*command, str(tmp_path / "counting")]
    subprocess.run(counting, env={**env, "REVSEARCH_CRASH_LOG": str(log)}, check=True, capture_output=True)
    point = next(line.split()[0] for line in log.read_text().splitlines() if "journal.npz replaced" in line)
    killed = subprocess.run([*command, str(index_dir)], env={**env, "REVSEARCH_CRASH_AT": point}, capture_output=True)
    assert killed.returncode == -9 and (index_dir / "journal.npz").exists()
    rc, out, err = _run(capsys, "index", folder, "--quiet", "--index-dir", index_dir)
    assert rc == 0, err
    assert "note: finished an interrupted update: 1 indexed, 1 removed" in out
    assert "4 image files found: 0 indexed, 4 unchanged, 0 removed" in out
