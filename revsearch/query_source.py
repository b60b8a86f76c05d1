"""Turn a query (path, URL, bytes or array) into an RGB image, refusing unsafe URLs."""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from .errors import ImageLoadError
from .images import as_rgb_array, decode_image, load_image

MAX_URL_BYTES = 32 * 1024 * 1024
URL_TIMEOUT_S = 15.0
ImageQuery = str | os.PathLike | bytes | np.ndarray


def _check_host(url: str, allow_private: bool) -> None:
    """Only http(s); no loopback / private / link-local addresses unless allowed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageLoadError(url, f"URL scheme {parts.scheme!r} not allowed (only http and https)")
    if not parts.hostname:
        raise ImageLoadError(url, "URL has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ImageLoadError(url, f"cannot resolve host: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ImageLoadError(url, f"host resolves to non-public address {address} "
                                      "(pass allow_private_urls=True to allow)")


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_host(newurl, self.allow_private)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, max_bytes: int = MAX_URL_BYTES, timeout: float = URL_TIMEOUT_S,
              allow_private: bool = False) -> bytes:
    """Download an image over http(s) with size and time limits; redirects are checked too."""
    _check_host(url, allow_private)
    opener = urllib.request.build_opener(_SafeRedirects(allow_private))
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "revsearch"}), timeout=timeout) as resp:
            data = resp.read(max_bytes + 1)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(url, f"download failed: {exc}") from None
    if len(data) > max_bytes:
        raise ImageLoadError(url, f"download larger than {max_bytes} bytes")
    return data


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
