"""A corpus of bad and odd input files, generated into a folder for the robustness tests.

``make_corpus(folder)`` writes one file (or link, or folder) per kind in :data:`KINDS` and returns a
:class:`Corpus` describing each: whether it is a good image that must be indexed, or a bad one that
must be reported with a reason containing ``reason``. Kinds that cannot be produced on this machine
(e.g. an unreadable file when running as root) are left out and listed in ``Corpus.skipped`` with why.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from helpers import CALTECH

#: Good images from the team share (copied into the corpus when available).
CALTECH_GOOD = ("airplanes/image_0001.jpg", "Motorbikes/image_0001.jpg", "sunflower/image_0001.jpg")


@dataclass(frozen=True)
class Case:
    """One generated input. ``path`` is a str (non-UTF-8 names carry surrogate escapes, as os.fsdecode gives)."""

    kind: str
    path: str
    good: bool
    reason: str | None = None  # substring of the expected failure reason (bad cases)
    listed: bool = True  # found by revsearch.files.list_images
    shape: tuple[int, int] | None = None  # expected decoded (height, width) of good cases, where known


@dataclass
class Corpus:
    root: Path
    cases: list[Case] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def by_kind(self, kind: str) -> Case:
        return next(c for c in self.cases if c.kind == kind)

    @property
    def good(self) -> list[Case]:
        return [c for c in self.cases if c.good]

    @property
    def bad(self) -> list[Case]:
        return [c for c in self.cases if not c.good]

    @property
    def listed(self) -> list[Case]:
        return [c for c in self.cases if c.listed]


def gradient(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A distinct RGB test image per seed."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(1, 5, 3)
    return np.stack(
        [(x * a * 255 // max(w - 1, 1)) % 256, (y * b * 255 // max(h - 1, 1)) % 256, ((x + y) * c * 7) % 256], axis=2
    ).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (CRC recomputed, so it is well-formed)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def png_with_corrupt_pixels() -> bytes:
    """Valid signature, IHDR and CRCs, but the IDAT stream is garbage (not zlib)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", garbage) + chunk(b"IEND", b"")


def heic_bytes() -> bytes:
    """The start of an HEIC file (ISO BMFF 'ftyp' box with brand heic) plus filler."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 200


def _write(path: str | bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def make_corpus(folder: str | os.PathLike) -> Corpus:
    """Write every kind of :data:`KINDS` into ``folder`` (created); see the module docstring."""
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    jpeg = encode(Image.fromarray(gradient(300, 400, seed=1)), "JPEG", quality=90)
    png = encode(Image.fromarray(gradient(300, 400, seed=2)), "PNG")

    def good(kind: str, name: str, data: bytes, shape: tuple[int, int] | None = None) -> None:
        _write(str(root / name), data)
        corpus.cases.append(Case(kind, str(root / name), True, shape=shape))

    def bad(kind: str, name: str, data: bytes | None, reason: str, listed: bool = True) -> None:
        if data is not None:
            _write(str(root / name), data)
        corpus.cases.append(Case(kind, str(root / name), False, reason, listed))

    # ---- bad files: each must be skipped with a reason -----------------------------------
    bad(
        "corrupt_bytes",
        "corrupt.jpg",
        bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
        "not a recognised image format",
    )
    bad("corrupt_png_data", "corrupt_pixels.png", png_with_corrupt_pixels(), "corrupt or truncated PNG")
    bad("truncated_jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    bad("truncated_png", "truncated.png", png[: len(png) // 2], "truncated")
    bad("zero_bytes", "empty.jpg", b"", "empty file (0 bytes)")
    bad("non_image_with_image_ext", "archive.png", b"PK\x03\x04" + b"\x14\x00" * 400, "not a recognised image format")
    bad("text_with_image_ext", "notes.jpg", b"Shopping list:\n- milk\n- bread\n" * 20, "not a recognised image format")
    bad("text_file", "readme.txt", b"just text\n", "not a recognised image format", listed=False)
    (root / "folder.jpg").mkdir()
    bad("directory_named_like_image", "folder.jpg", None, "is a directory")
    good(
        "image_inside_image_named_directory",
        "folder.jpg/inside.png",
        encode(Image.fromarray(gradient(seed=3)), "PNG"),
        (48, 64),
    )
    os.symlink(root / "deleted-long-ago.jpg", root / "missing.jpg")
    bad("missing_file_dangling_symlink", "missing.jpg", None, "file not found")
    unreadable = root / "unreadable.jpg"
    _write(str(unreadable), jpeg)
    os.chmod(unreadable, 0)
    try:
        with open(unreadable, "rb"):
            readable = True
    except PermissionError:
        readable = False
    if readable:  # root (or CAP_DAC_OVERRIDE) reads it anyway: the case cannot be produced here
        os.chmod(unreadable, 0o644)
        unreadable.unlink()
        corpus.skipped["unreadable_permissions"] = (
            "running with privileges that ignore file permissions "
            f"(uid {os.getuid()}): a chmod 000 file is still readable"
        )
    else:
        corpus.cases.append(Case("unreadable_permissions", str(unreadable), False, "permission denied"))
    bad("decompression_bomb", "bomb.png", png_with_declared_size(100_000, 100_000), "decompression bomb")
    bad("heic", "photo.heic", heic_bytes(), "not supported")
    os.symlink("self_loop.jpg", root / "self_loop.jpg")
    bad("symlink_loop_file", "self_loop.jpg", None, "Too many levels of symbolic links")
    os.mkfifo(root / "pipe.jpg")  # reading a FIFO would block forever
    bad("fifo_named_like_image", "pipe.jpg", None, "not a regular file")
    _write(os.path.join(os.fsencode(root), b"broken-\xff\xfe.jpg"), jpeg[:200])
    bad("non_utf8_name_bad_file", os.fsdecode(b"broken-\xff\xfe.jpg"), None, "truncated")

    # ---- odd but good: each must be indexed -----------------------------------------------
    rgb = gradient(seed=4)
    good("grayscale", "gray.png", encode(Image.fromarray(rgb[:, :, 0], "L"), "PNG"), (48, 64))
    good("grayscale_jpeg", "gray.jpg", encode(Image.fromarray(rgb[:, :, 1], "L"), "JPEG"), (48, 64))
    rgba = np.dstack([gradient(seed=5), np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))])
    good("rgba_transparency", "rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"), (48, 64))
    good("cmyk_jpeg", "cmyk.jpg", encode(Image.fromarray(gradient(seed=6)).convert("CMYK"), "JPEG"), (48, 64))
    ok, png16 = cv2.imencode(".png", gradient(seed=7).astype(np.uint16) * 257)
    assert ok
    good("png_16bit", "deep16.png", png16.tobytes(), (48, 64))
    good(
        "palette_gif",
        "palette.gif",
        encode(Image.fromarray(gradient(seed=8)).convert("P", palette=Image.ADAPTIVE), "GIF"),
        (48, 64),
    )
    frames = [Image.fromarray(gradient(seed=s)) for s in (9, 10, 11)]
    good(
        "animated_gif",
        "animated.gif",
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        (48, 64),
    )
    good(
        "animated_webp",
        "animated.webp",
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True),
        (48, 64),
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 64x48 stored -> 48 wide, 64 tall
    good("exif_rotated_jpeg", "rotated.jpg", encode(Image.fromarray(gradient(seed=12)), "JPEG", exif=exif), (64, 48))
    good("one_pixel", "one_pixel.png", encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), (1, 1))
    good("very_wide", "wide_20000x10.png", encode(Image.fromarray(gradient(10, 20000, seed=13)), "PNG"), (10, 20000))
    good("png_content_jpg_extension", "really_a_png.jpg", encode(Image.fromarray(gradient(seed=14)), "PNG"), (48, 64))
    good("uppercase_extension", "UPPER.JPEG", encode(Image.fromarray(gradient(seed=15)), "JPEG"), (48, 64))
    good("bmp", "bitmap.bmp", encode(Image.fromarray(gradient(seed=16)), "BMP"), (48, 64))
    good("tiff", "scan.tif", encode(Image.fromarray(gradient(seed=17)), "TIFF"), (48, 64))
    good("spaces_in_name", "name with  spaces .jpg", encode(Image.fromarray(gradient(seed=18)), "JPEG"), (48, 64))
    good("unicode_name", "ünïcødé 名前 🖼.png", encode(Image.fromarray(gradient(seed=19)), "PNG"), (48, 64))
    non_utf8 = b"latin1-caf\xe9.jpg"
    _write(os.path.join(os.fsencode(root), non_utf8), encode(Image.fromarray(gradient(seed=20)), "JPEG"))
    corpus.cases.append(Case("non_utf8_name", str(root / os.fsdecode(non_utf8)), True, shape=(48, 64)))

    # ---- folder structure traps -------------------------------------------------------------
    os.symlink(".", root / "loop")  # a directory symlink to its own parent: walking must not recurse
    corpus.cases.append(Case("symlink_loop_dir", str(root / "loop"), False, "is a directory", listed=False))

    # ---- real photos ------------------------------------------------------------------------
    if CALTECH.is_dir():
        for i, rel in enumerate(CALTECH_GOOD):
            name = "real_" + rel.replace("/", "_")
            shutil.copy(CALTECH / rel, root / name)
            corpus.cases.append(Case(f"real_photo_{i}", str(root / name), True))
    else:
        for i in range(len(CALTECH_GOOD)):
            corpus.skipped[f"real_photo_{i}"] = f"Caltech-101 not found at {CALTECH}"
    return corpus


#: Every kind make_corpus can produce (tests parametrize over these; absent ones are skipped).
KINDS = (
    "corrupt_bytes",
    "corrupt_png_data",
    "truncated_jpeg",
    "truncated_png",
    "zero_bytes",
    "non_image_with_image_ext",
    "text_with_image_ext",
    "text_file",
    "directory_named_like_image",
    "missing_file_dangling_symlink",
    "unreadable_permissions",
    "decompression_bomb",
    "heic",
    "symlink_loop_file",
    "non_utf8_name_bad_file",
    "fifo_named_like_image",
    "symlink_loop_dir",
    "image_inside_image_named_directory",
    "grayscale",
    "grayscale_jpeg",
    "rgba_transparency",
    "cmyk_jpeg",
    "png_16bit",
    "palette_gif",
    "animated_gif",
    "animated_webp",
    "exif_rotated_jpeg",
    "one_pixel",
    "very_wide",
    "png_content_jpg_extension",
    "uppercase_extension",
    "bmp",
    "tiff",
    "spaces_in_name",
    "unicode_name",
    "non_utf8_name",
    "real_photo_0",
    "real_photo_1",
    "real_photo_2",
)
BAD_KINDS = KINDS[:17]
GOOD_KINDS = KINDS[17:]
