"""Bad queries: bad files, unsafe or failing URLs, vectors that do not fit, indexes that are gone.

Each must give a clear error (ImageLoadError / IndexMismatchError / IndexNotFoundError naming the
cause) and leave the index untouched. URLs are served by a local http.server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from badfiles import BAD_KINDS, GOOD_KINDS, make_corpus
from helpers import TORCH_CACHE
from revsearch import PixelFeatures, SearchIndex
from revsearch.errors import ImageLoadError, IndexMismatchError, IndexNotFoundError, RevsearchError
from revsearch.features.query_source import fetch_url, load_query_image
from revsearch.index.milvus import MilvusIndex


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("robust-queries") / "corpus")


@pytest.fixture(scope="module")
def index(corpus, tmp_path_factory):
    """A pixel index of the corpus's good files (bad ones are skipped at build time)."""
    directory = tmp_path_factory.mktemp("robust-queries") / "idx"
    built, _ = SearchIndex.build([c.path for c in corpus.listed], directory, backend="pixel", progress=False)
    return built


@pytest.fixture(scope="module")
def reference(corpus, index):
    """Results for a fixed query; every test checks the index still answers exactly this."""
    return _snapshot(index, corpus)


def _snapshot(index, corpus):
    query = corpus.by_kind("cmyk_jpeg").path
    return len(index), sorted(index.backend.keys()), [(h.key, h.distance) for h in index.query(query, k=5)]


def _assert_untouched(index, corpus, reference):
    assert _snapshot(index, corpus) == reference
    assert _snapshot(SearchIndex.load(index.directory), corpus) == reference  # and on disk


# ---- bad query files ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_query_file_gives_a_clear_error_and_leaves_the_index_untouched(corpus, index, reference, kind):
    if kind in corpus.skipped:
        pytest.skip(corpus.skipped[kind])
    case = corpus.by_kind(kind)
    with pytest.raises(ImageLoadError) as info:
        index.query(case.path, k=3)
    assert case.reason in info.value.reason and info.value.source == case.path
    assert str(info.value) == f"{case.path}: {info.value.reason}"
    _assert_untouched(index, corpus, reference)


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_odd_but_valid_query_file_finds_itself(corpus, index, kind):
    if kind in corpus.skipped:
        pytest.skip(corpus.skipped[kind])
    path = corpus.by_kind(kind).path
    hits = index.query(path, k=3)
    assert hits[0].distance == 0 and path in {h.key for h in hits if h.distance == 0}


@pytest.mark.parametrize(
    "query, reason",
    [
        (b"", "not a recognised image format"),
        (b"GIF89a" + b"\x00" * 3, "not a recognised image format"),
        (b"import os\nprint('a python file')\n" * 20, "not a recognised image format"),
        (np.zeros((0, 0), np.uint8), "unsupported array shape"),
        (np.zeros((8, 8, 2), np.uint8), "unsupported array shape"),
        (np.zeros((2, 2, 2, 3), np.uint8), "unsupported array shape"),
        ("", "is a directory"),
        ("data:image/png;base64,AAAA", "file not found"),  # not a URL scheme revsearch fetches: a path
    ],
)
def test_bad_in_memory_queries(corpus, index, reference, query, reason):
    with pytest.raises(ImageLoadError) as info:
        index.query(query)
    assert reason in info.value.reason
    _assert_untouched(index, corpus, reference)


def test_cli_query_with_a_bad_file_exits_2_with_the_reason(corpus, index):
    case = corpus.by_kind("truncated_jpeg")
    done = subprocess.run(
        [sys.executable, "-m", "revsearch", "query", case.path, "--index-dir", str(index.directory)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TORCH_HOME": str(TORCH_CACHE)},
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"revsearch: error: {case.path}: {case.reason}" in done.stderr


# ---- URL queries against a local server -------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    image: bytes = b""
    requests: list[str] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, body: bytes, ctype: str = "image/png", length: bool = True, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (time limit tests)
            pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        routes = {
            "/image.png": lambda: self._send(self.image),
            "/page.html": lambda: self._send(b"<html>not an image</html>", "text/html"),
            "/big": lambda: self._send(b"\x89PNG" + b"\x00" * 100_000),
            "/missing": lambda: self._send(b"gone", "text/plain", status=404),
        }
        if self.path in routes:
            routes[self.path]()
        elif self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big-unannounced":  # no Content-Length: the limit applies while reading
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\x00" * 10_000)
            except OSError:
                pass
            self.close_connection = True
        elif self.path == "/slow":  # no answer for 5 s
            time.sleep(5)
            self._send(self.image)
        elif self.path == "/trickle":  # headers at once, then a byte every 0.2 s for ~10 s
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            try:
                for byte in self.image[:50]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True
        else:
            self._send(b"not found", "text/plain", status=404)


@pytest.fixture(scope="module")
def server(corpus):
    _Handler.image = open(corpus.by_kind("grayscale").path, "rb").read()
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::127.0.0.1]",
        "0.0.0.0",
        "10.1.2.3",
        "169.254.169.254",
        "[fe80::1]",
        "192.168.0.1",
    ],
)
def test_private_and_loopback_urls_are_refused_by_default(corpus, index, reference, server, host):
    port = server.rsplit(":", 1)[1]
    url = f"http://{host}:{port}/image.png"
    before = len(_Handler.requests)
    with pytest.raises(ImageLoadError) as info:
        index.query(url)
    assert "non-public address" in info.value.reason and "allow_private_urls=True" in info.value.reason
    assert len(_Handler.requests) == before  # refused before any connection
    _assert_untouched(index, corpus, reference)


def test_local_url_is_allowed_when_asked(corpus, index, server):
    hits = index.query(f"{server}/image.png", k=1, allow_private_urls=True)
    assert hits[0].key == corpus.by_kind("grayscale").path and hits[0].distance == 0
    via_redirect = index.query(f"{server}/redirect?/image.png", k=1, allow_private_urls=True)
    assert via_redirect == hits


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "URL scheme 'file' not allowed"),
        ("ftp://127.0.0.1/image.png", "URL scheme 'ftp' not allowed"),
        ("gopher://127.0.0.1/", "URL scheme 'gopher' not allowed"),
        ("http://:80/x.png", "URL has no host"),
        ("http://127.0.0.1:99999/x.png", "invalid URL"),
        ("http://no-such-host.invalid/x.png", "cannot resolve host"),
    ],
)
def test_non_http_and_malformed_urls_are_refused(url, reason):
    for allow in (False, True):
        if reason == "cannot resolve host" and allow:
            continue  # resolution is left to the download when private hosts are allowed
        with pytest.raises(ImageLoadError) as info:
            load_query_image(url, allow_private_urls=allow)
        assert reason in info.value.reason


@pytest.mark.parametrize(
    "target, scheme", [("file:///etc/passwd", "file"), ("ftp://127.0.0.1/x", "ftp"), ("data:text/plain,hello", "data")]
)
def test_redirect_to_a_non_http_scheme_is_refused(server, target, scheme):
    url = f"{server}/redirect?{target}"
    with pytest.raises(ImageLoadError) as info:
        fetch_url(url, allow_private=True)
    expected = f"redirected to {target}, refused: URL scheme {scheme!r} not allowed (only http and https)"
    assert info.value.reason == expected
    assert info.value.source == url


def test_redirect_from_a_public_url_to_an_internal_address_is_refused():
    """What the redirect handler does with a 302 from a public host to 127.0.0.1 (no network needed)."""
    import email.message
    import io
    import urllib.request

    from revsearch.features.query_source import _SafeRedirects

    headers = email.message.Message()
    headers["Location"] = "http://127.0.0.1:8080/admin"
    request = urllib.request.Request("http://93.184.215.14/image.jpg")
    with pytest.raises(ImageLoadError) as info:
        _SafeRedirects(allow_private=False).http_error_302(request, io.BytesIO(), 302, "Found", headers)
    assert info.value.reason.startswith(
        "redirected to http://127.0.0.1:8080/admin, refused: host resolves to non-public address 127.0.0.1"
    )


def test_size_limit(server):
    assert len(fetch_url(f"{server}/image.png", allow_private=True)) == len(_Handler.image)
    with pytest.raises(ImageLoadError, match=r"larger than 1000 bytes \(Content-Length 100004\)"):
        fetch_url(f"{server}/big", max_bytes=1000, allow_private=True)
    with pytest.raises(ImageLoadError, match="larger than 50000 bytes"):
        fetch_url(f"{server}/big-unannounced", max_bytes=50_000, allow_private=True)
    assert len(fetch_url(f"{server}/big", max_bytes=100_004, allow_private=True)) == 100_004


def test_time_limit_covers_a_silent_and_a_trickling_server(server):
    for path, timeout in (("/slow", 0.5), ("/trickle", 1.0)):
        start = time.monotonic()
        with pytest.raises(ImageLoadError, match="timed out"):
            fetch_url(f"{server}{path}", timeout=timeout, allow_private=True)
        assert time.monotonic() - start < timeout + 1.5, path


def test_http_errors_and_non_images_from_urls(corpus, index, reference, server):
    with pytest.raises(ImageLoadError, match="download failed: HTTP Error 404"):
        index.query(f"{server}/missing", allow_private_urls=True)
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        index.query(f"{server}/page.html", allow_private_urls=True)
    _assert_untouched(index, corpus, reference)


# ---- vectors and indexes that do not fit ------------------------------------------------------
def test_query_vectors_of_the_wrong_dimension(corpus, index, reference):
    dim = index.backend.dim
    for wrong in (np.zeros((1, 1280), np.float32), np.zeros(dim + 1), np.zeros((2, 512))):
        with pytest.raises(IndexMismatchError) as info:
            index.query_vectors(wrong)
        assert f"dimension {wrong.shape[-1]}, the index expects {dim}" in str(info.value)
    _assert_untouched(index, corpus, reference)


def test_query_by_image_always_uses_the_index_own_extractor(corpus, index, tmp_path):
    """An index re-opened from disk rebuilds the extractor it was built with (here 8x8 thumbnails)."""
    paths = [c.path for c in corpus.good][:4]
    SearchIndex.build(paths, tmp_path / "small", backend="pixel", extractor=PixelFeatures(8), progress=False)
    small = SearchIndex.load(tmp_path / "small")
    assert small.extractor.describe()["size"] == 8 and small.backend.dim == 8 * 8 * 3
    assert small.query(paths[2], k=1)[0].key == paths[2]
    with pytest.raises(IndexMismatchError, match="dimension 3072, the index expects 192"):
        small.query_vectors(index.embed_query(paths[2]))  # a vector made by another extractor


def test_milvus_mismatches_and_a_deleted_collection(corpus, tmp_path):
    paths = [c.path for c in corpus.good][:5]
    directory = tmp_path / "mil"
    built, _ = SearchIndex.build(paths, directory, backend="milvus", extractor=PixelFeatures(8), progress=False)
    collection, uri = built.backend.collection, built.backend.uri
    try:
        with pytest.raises(IndexMismatchError, match="query has dimension 1280, the index expects 192"):
            built.query_vectors(np.zeros((1, 1280), np.float32))
        with pytest.raises(IndexMismatchError, match="vectors have dimension 1280, the index expects 192"):
            built.backend.add(["x"], np.zeros((1, 1280)))
        with pytest.raises(
            IndexMismatchError,
            match=f"collection '{collection}' holds 192-d vectors, this index produces 1280-d vectors",
        ):
            MilvusIndex(1280, collection, uri, create=False)
        assert len(built) == 5 and built.query(paths[1], k=1)[0].key == paths[1]
        built.backend.drop()  # someone deletes the collection
    finally:
        built.backend.close()
    with pytest.raises(IndexNotFoundError) as info:
        SearchIndex.load(directory)
    assert f"Milvus collection {collection!r} does not exist at {uri!r}" in str(info.value)

    os.remove(uri)  # the whole Lite file gone: same clear error (an empty file is created, not a crash)
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        SearchIndex.load(directory)


def test_missing_index_directory_or_manifest(tmp_path):
    with pytest.raises(IndexNotFoundError, match="no revsearch index in .*nope.*missing manifest.json"):
        SearchIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="missing manifest.json"):
        SearchIndex.load(tmp_path / "empty")
    assert issubclass(IndexNotFoundError, RevsearchError)


def test_exact_index_with_its_vector_files_deleted(corpus, tmp_path):
    paths = [c.path for c in corpus.good][:3]
    SearchIndex.build(paths, tmp_path / "ex", backend="pixel", progress=False)
    shutil.copy(tmp_path / "ex" / "manifest.json", tmp_path / "manifest.bak")
    for f in (tmp_path / "ex").glob("gen-*/vectors.*"):  # the live generation's vector files
        f.unlink()
    with pytest.raises((RevsearchError, FileNotFoundError)) as info:
        SearchIndex.load(tmp_path / "ex")
    assert "vectors" in str(info.value)
