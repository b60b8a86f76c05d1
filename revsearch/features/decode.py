"""Decode image files to RGB uint8 arrays, with a per-file reason when that fails.

OpenCV decodes (EXIF orientation, any depth / colour model to 8-bit RGB, large JPEGs at reduced size);
Pillow reads the header first, so decompression bombs and non-images are refused cheaply.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from revsearch.errors import ImageLoadError

#: Refuse images whose header declares more pixels than this (decompression bombs).
DEFAULT_MAX_PIXELS = 200_000_000
#: Refuse files larger than this many bytes before reading them.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: Refuse images whose decoded pixels would take more memory than this (checked from the header,
#: before anything is allocated; JPEGs count at the reduced size they are decoded at).
DEFAULT_MAX_DECODED_BYTES = 1 << 30
#: Rows composited over white at a time (bounds the temporary arrays of large transparent images).
_FLATTEN_ROWS = 256

_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Image.MAX_IMAGE_PIXELS = None  # we apply our own, configurable limit from the header


class _DecodeBudget:
    """Decoded bytes in flight across decoding threads: a decode that would go over the limit waits for
    others to finish (one alone always proceeds), so huge images are decoded one at a time."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, size: int):
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + size <= self.limit)
            self.in_use += size
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= size
                self._cond.notify_all()


_BUDGET = _DecodeBudget(DEFAULT_MAX_DECODED_BYTES)


@dataclass(frozen=True)
class ImageHeader:
    """What the file's header says, read without decoding pixels."""

    format: str
    width: int
    height: int
    mode: str
    has_alpha: bool
    #: Bytes per decoded sample: 2 for 16-bit images (a PNG's IHDR says so where Pillow's mode does
    #: not: it opens a 16-bit RGB or RGBA PNG as "RGB" or "RGBA").
    depth: int = 1


def read_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a file's bytes, turning every filesystem failure into an ImageLoadError."""
    source = str(path)
    try:
        p = Path(path)
        if p.is_dir():
            raise ImageLoadError(source, "is a directory, not an image file")
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # FIFOs and devices report size 0: say what they really are
            raise ImageLoadError(source, "not a regular file (FIFO, socket or device)")
        size = st.st_size
        if size == 0:
            raise ImageLoadError(source, "empty file (0 bytes)")
        if size > max_bytes:
            raise ImageLoadError(source, f"file too large ({size} bytes > limit {max_bytes})")
        return p.read_bytes()
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(source, "file not found") from None
    except PermissionError:
        raise ImageLoadError(source, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(source, f"cannot read file: {exc.strerror or exc}") from None


def read_header(data: bytes, source: str = "<bytes>") -> ImageHeader:
    """Identify the image format and declared size from the first bytes."""
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        raise ImageLoadError(source, "HEIC/AVIF images are not supported (convert to JPEG or PNG)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            has_alpha = im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
            png16 = data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24] == 16
            depth = 2 if png16 or "16" in im.mode or im.mode in ("I", "F") else 1
            return ImageHeader(im.format or "unknown", im.width, im.height, im.mode, has_alpha, depth)
    except Image.UnidentifiedImageError:
        raise ImageLoadError(source, "not a recognised image format") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        if "truncat" in str(exc).lower():
            raise ImageLoadError(source, "truncated file (the header is incomplete)") from None
        raise ImageLoadError(source, f"unreadable image header: {exc}") from None


def _reduction_factor(header: ImageHeader, min_side: int | None) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) that keeps the short side >= ``min_side``."""
    if not min_side or header.format != "JPEG":
        return 1
    short = min(header.width, header.height)
    factor = 1
    while factor < 8 and short // (factor * 2) >= min_side:
        factor *= 2
    return factor


def _jpeg_is_truncated(data: bytes) -> bool:
    """A complete JPEG ends with the EOI marker (possibly followed by padding)."""
    if data.rstrip(b"\x00\r\n \xff")[-2:] == _JPEG_EOI:
        return False
    try:  # trailing data after EOI (e.g. MPF): let Pillow decide with a full decode
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return False
    except Exception:
        return True


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Fallback for what OpenCV cannot decode (e.g. GIF): first frame, EXIF-rotated, RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            return _flatten_alpha_pil(im)
    except Exception:
        return None


def _flatten_alpha_pil(im: Image.Image) -> np.ndarray:
    """Composite transparent images over white, then convert to RGB uint8."""
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _flatten_alpha_cv(image: np.ndarray) -> np.ndarray:
    """BGRA (any depth) over white -> RGB uint8, a band of rows at a time (no full-size float copies)."""
    if image.ndim == 2:
        return cv2.cvtColor(_to_uint8(image), cv2.COLOR_GRAY2RGB)
    if image.shape[2] not in (2, 4):
        return cv2.cvtColor(_to_uint8(image), cv2.COLOR_BGR2RGB)
    out = np.empty((image.shape[0], image.shape[1], 3), np.uint8)
    for top in range(0, image.shape[0], _FLATTEN_ROWS):
        band = _to_uint8(image[top : top + _FLATTEN_ROWS])
        if band.shape[2] == 2:  # gray + alpha
            bgr, alpha = cv2.cvtColor(band[:, :, 0], cv2.COLOR_GRAY2BGR), band[:, :, 1]
        else:
            bgr, alpha = band[:, :, :3], band[:, :, 3]
        a = alpha.astype(np.float32)[:, :, None] / 255.0
        mixed = bgr.astype(np.float32) * a + 255.0 * (1.0 - a)
        out[top : top + _FLATTEN_ROWS] = cv2.cvtColor(np.clip(mixed + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_BGR2RGB)
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image


def decoded_size(header: ImageHeader, min_side: int | None = None) -> int:
    """Bytes the decoded pixels will take (before any is allocated): reduced JPEG size, 4 channels
    where the image has alpha, and 2 bytes a sample for 16-bit images (decoded at full depth first)."""
    factor = _reduction_factor(header, min_side) if not header.has_alpha else 1
    width, height = -(-header.width // factor), -(-header.height // factor)
    return width * height * (4 if header.has_alpha else 3) * header.depth


def decode_image(
    data: bytes,
    source: str = "<bytes>",
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3). ``min_side``: the short side needed
    (JPEGs are then decoded at 1/2, 1/4 or 1/8 size); over ``max_pixels`` / ``max_decoded_bytes``: refused."""
    header = read_header(data, source)
    if header.width < 1 or header.height < 1:
        raise ImageLoadError(source, f"invalid dimensions {header.width}x{header.height}")
    if header.width * header.height > max_pixels:
        raise ImageLoadError(
            source,
            f"declared size {header.width}x{header.height} exceeds the {max_pixels}-pixel limit "
            "(possible decompression bomb)",
        )
    needed = decoded_size(header, min_side)
    if needed > max_decoded_bytes:
        raise ImageLoadError(
            source,
            f"decoded size {header.width}x{header.height} ({needed / 2**20:.0f} MiB) exceeds "
            f"the {max_decoded_bytes / 2**20:.0f} MiB memory budget (shrink the image first)",
        )
    if header.format == "JPEG" and _jpeg_is_truncated(data):
        raise ImageLoadError(source, "truncated JPEG (no end-of-image marker)")
    with _BUDGET.reserve(needed):
        return _decode(data, header, source, min_side)


def _decode(data: bytes, header: ImageHeader, source: str, min_side: int | None) -> np.ndarray:
    """Decode pixels the header has already been checked for (see :func:`decode_image`)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    image: np.ndarray | None
    if header.has_alpha and header.format != "GIF":
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        image = _flatten_alpha_cv(raw) if raw is not None else None
    else:
        factor = _reduction_factor(header, min_side)
        flag = _REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR)
        bgr = cv2.imdecode(buf, flag)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None else None
    if image is None:
        image = _decode_with_pillow(data)
    if image is None:
        raise ImageLoadError(source, f"corrupt or truncated {header.format} data (decoder failed)")
    return np.ascontiguousarray(image)


def load_image(
    path: str | os.PathLike, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read and decode one image file to RGB uint8; raises ImageLoadError with a reason."""
    return decode_image(read_bytes(path), str(path), min_side=min_side, max_pixels=max_pixels)


def as_rgb_array(image: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Validate an in-memory image (H, W), (H, W, 3) or (H, W, 4) and return RGB uint8."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.size == 0 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageLoadError(source, f"unsupported array shape {arr.shape}")
    arr = _to_uint8(arr)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2 or arr.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2))
    if arr.shape[2] == 4:
        return np.asarray(_flatten_alpha_pil(Image.fromarray(arr, "RGBA")))
    return np.ascontiguousarray(arr)
