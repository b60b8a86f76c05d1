"""Turn a query (path, URL, bytes or array) into an RGB image, refusing unsafe URLs."""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from revsearch.errors import ImageLoadError, PrivateURLError
from revsearch.features.decode import as_rgb_array, decode_image, load_image

MAX_URL_BYTES = 32 * 1024 * 1024
URL_TIMEOUT_S = 15.0
ImageQuery = str | os.PathLike | bytes | np.ndarray


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable, including any IPv4 address embedded in an IPv6 one (mapped, 6to4, NAT64...)."""
    if not address.is_global:
        return False
    if address.version == 6:
        embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        if address in _NAT64 or int(address) >> 32 == 0:  # NAT64 and IPv4-compatible (::a.b.c.d)
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return all(a.is_global for a in embedded if a is not None)
    return True


def _check_host(url: str, allow_private: bool) -> None:
    """Only http(s); no loopback / private / link-local addresses unless allowed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageLoadError(url, f"URL scheme {parts.scheme!r} not allowed (only http and https)")
    if not parts.hostname:
        raise ImageLoadError(url, "URL has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ImageLoadError(url, f"invalid URL: {exc}") from None
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ImageLoadError(url, f"cannot resolve host: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not _is_public(address):
            raise PrivateURLError(
                url, f"host resolves to non-public address {address} (pass allow_private_urls=True to allow)"
            )


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Every redirect target passes the same checks as the first URL (scheme, then address)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urllib.parse.urljoin(req.full_url, location)
            try:
                _check_host(target, self.allow_private)
            except ImageLoadError as exc:
                fp.close()
                raise type(exc)(req.full_url, f"redirected to {target}, refused: {exc.reason}") from None
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _Deadline:
    """One wall-clock limit for a whole fetch: every connection it opens gets the time that is left,
    and when the time is up every socket is shut down, so a blocked read returns at once."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.sockets: list[socket.socket] = []
        self.expired = False
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def connection(self, cls: type[http.client.HTTPConnection]):
        """A factory of ``cls`` connections whose sockets this deadline can shut."""

        def make(host, timeout=None, **kwargs):
            conn = cls(host, timeout=self.remaining(), **kwargs)
            create = conn._create_connection

            def create_tracked(address, timeout, source_address=None):
                sock = create(address, self.remaining(), source_address)
                with self._lock:
                    self.sockets.append(sock)
                    if self.expired:
                        sock.shutdown(socket.SHUT_RDWR)
                return sock

            conn._create_connection = create_tracked
            return conn

        return make

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _deadline_handlers(deadline: _Deadline) -> list[urllib.request.BaseHandler]:
    """http and https handlers whose connections ``deadline`` limits."""

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(deadline.connection(http.client.HTTPConnection), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(deadline.connection(http.client.HTTPSConnection), req, context=self._context)

    return [HTTP(), HTTPS()]


def fetch_url(
    url: str, max_bytes: int = MAX_URL_BYTES, timeout: float = URL_TIMEOUT_S, allow_private: bool = False
) -> bytes:
    """Download an image over http(s) with size and time limits; redirects are checked too. ``timeout``
    is one deadline for the whole fetch (name resolution, connecting, headers, redirects, body)."""
    deadline = _Deadline(timeout)
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["data"] = _download(url, max_bytes, timeout, allow_private, deadline)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="revsearch-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or deadline.expired:
        deadline.expire()  # the worker's blocked read fails now; a stuck name lookup is abandoned
        raise ImageLoadError(url, f"download timed out (no complete response within {timeout:g} s in all)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


def _download(url: str, max_bytes: int, timeout: float, allow_private: bool, deadline: _Deadline) -> bytes:
    _check_host(url, allow_private)
    opener = urllib.request.build_opener(_SafeRedirects(allow_private), *_deadline_handlers(deadline))
    chunks: list[bytes] = []
    size = 0
    try:
        with opener.open(
            urllib.request.Request(url, headers={"User-Agent": "revsearch"}), timeout=deadline.remaining()
        ) as resp:
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageLoadError(url, f"download larger than {max_bytes} bytes (Content-Length {declared})")
            while size <= max_bytes:
                chunk = resp.read1(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except ImageLoadError:
        raise
    except Exception as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            raise ImageLoadError(
                url, f"download timed out (no complete response within {timeout:g} s in all)"
            ) from None
        raise ImageLoadError(url, f"download failed: {exc}") from None
    if size > max_bytes:
        raise ImageLoadError(url, f"download larger than {max_bytes} bytes")
    return b"".join(chunks)


def load_query_image(query: ImageQuery, min_side: int | None = None, allow_private_urls: bool = False) -> np.ndarray:
    """Decode a query given as a file path, an http(s) URL, encoded bytes or an image array."""
    if isinstance(query, np.ndarray):
        return as_rgb_array(query)
    if isinstance(query, bytes):
        return decode_image(query, "<uploaded bytes>", min_side=min_side)
    text = str(query)
    if "://" in text:
        return decode_image(fetch_url(text, allow_private=allow_private_urls), text, min_side=min_side)
    return load_image(Path(text).expanduser(), min_side=min_side)
