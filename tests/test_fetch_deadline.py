"""One deadline for a whole URL fetch: headers trickled byte by byte and chains of slow redirects
cannot hold a query longer than the timeout (each check: the server still had more to send)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from revsearch.errors import ImageLoadError
from revsearch.features.query_source import fetch_url

PNG = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
DRIP_BYTES, DRIP_PAUSE_S = 400, 0.05  # 20 s of headers
REDIRECTS, REDIRECT_PAUSE_S = 8, 0.4  # 3.2 s of redirects


class _Handler(BaseHTTPRequestHandler):
    served: list[str] = []
    drip_finished = threading.Event()

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.served.append(self.path)
        try:
            if self.path == "/drip":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(DRIP_BYTES):  # one endless header, a byte at a time
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(DRIP_PAUSE_S)
                self.drip_finished.set()
            elif self.path.startswith("/hop/"):
                left = int(self.path.rsplit("/", 1)[1])
                time.sleep(REDIRECT_PAUSE_S)
                self.send_response(302 if left else 200)
                self.send_header("Location", f"/hop/{left - 1}") if left else self.send_header(
                    "Content-Length", str(len(PNG))
                )
                self.end_headers()
                if not left:
                    self.wfile.write(PNG)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what the deadline is for


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_trickled_headers_hit_the_deadline(server):
    with pytest.raises(ImageLoadError, match=r"timed out \(no complete response within 0.5 s in all\)"):
        fetch_url(f"{server}/drip", timeout=0.5, allow_private=True)
    assert not _Handler.drip_finished.is_set()  # given up while the server was still trickling


def test_slow_redirects_share_one_deadline(server):
    _Handler.served.clear()
    with pytest.raises(ImageLoadError, match="timed out"):
        fetch_url(f"{server}/hop/{REDIRECTS}", timeout=1.0, allow_private=True)
    assert len(_Handler.served) < REDIRECTS  # each hop was within any per-read limit; their sum was not
    assert fetch_url(f"{server}/hop/1", timeout=30, allow_private=True) == PNG  # a quick chain still works
