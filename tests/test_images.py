"""Image decoding: every colour format becomes RGB uint8; every bad file gets a reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from revsearch.errors import ImageLoadError
from revsearch.features.decode import decode_image, load_image


def _gradient(h: int = 60, w: int = 80) -> np.ndarray:
    """RGB test image: red increases left to right, green top to bottom, blue constant."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=2).astype(np.uint8)


def _save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_roundtrip_is_exact(tmp_path):
    rgb = _gradient()
    out = load_image(_save(tmp_path, "a.png", Image.fromarray(rgb)))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)  # channel order RGB, not BGR


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _gradient()[:, :, 0]
    out = load_image(_save(tmp_path, "g.png", Image.fromarray(gray, "L")))
    assert out.shape == (60, 80, 3)
    np.testing.assert_array_equal(out[:, :, 0], gray)
    np.testing.assert_array_equal(out[:, :, 1], gray)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)  # opaque red left half, fully transparent right half
    out = load_image(_save(tmp_path, "t.png", Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 9]) == (255, 255, 255)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:] = (200, 30, 30)
    path = _save(tmp_path, "c.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    out = load_image(path)
    assert out.shape == (32, 32, 3)
    r, g, b = out[16, 16].astype(int)
    assert r > 150 and g < 80 and b < 80, out[16, 16]


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    img16 = np.full((8, 8, 3), 40000, np.uint16)
    path = tmp_path / "d.png"
    cv2.imwrite(str(path), img16)
    out = load_image(path)
    assert out.dtype == np.uint8
    assert abs(int(out[0, 0, 0]) - 40000 // 257) <= 1


def test_palette_gif_and_png(tmp_path):
    rgb = _gradient()
    for name in ("p.gif", "p.png"):
        out = load_image(_save(tmp_path, name, Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)))
        assert out.shape == rgb.shape
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 12


def test_exif_orientation_is_applied(tmp_path):
    rgb = _gradient(60, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    path = _save(tmp_path, "r.jpg", Image.fromarray(rgb), exif=exif, quality=95)
    out = load_image(path)
    assert out.shape == (80, 60, 3)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 6


def test_large_jpeg_decoded_at_reduced_size(tmp_path):
    big = cv2.resize(_gradient(), (4000, 3000))
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big)
    reduced = load_image(path, min_side=224)
    assert reduced.shape == (375, 500, 3)  # 1/8 keeps the short side >= 224
    assert load_image(path).shape == (3000, 4000, 3)
    full_small = cv2.resize(load_image(path), (64, 64), interpolation=cv2.INTER_AREA).astype(int)
    reduced_small = cv2.resize(reduced, (64, 64), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(full_small - reduced_small).mean() < 3


def test_tiny_and_extremely_wide_images(tmp_path):
    assert load_image(_save(tmp_path, "one.png", Image.new("RGB", (1, 1), (1, 2, 3)))).shape == (1, 1, 3)
    assert load_image(_save(tmp_path, "wide.png", Image.new("RGB", (20000, 10)))).shape == (10, 20000, 3)


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is rewritten (with a correct CRC) to claim a huge size."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"hello, I am not an image\n" * 10, "not a recognised image format"),
        ("random.png", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a recognised"),
        ("heic.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100, "HEIC"),
        ("bomb.png", None, "decompression bomb"),
    ],
)
def test_bad_files_raise_with_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(_png_with_declared_size(100_000, 100_000) if content is None else content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert reason in info.value.reason
    assert info.value.source == str(path)


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_files_are_rejected(tmp_path, fmt, suffix):
    buf = io.BytesIO()
    Image.fromarray(cv2.resize(_gradient(), (400, 300))).save(buf, fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "truncated" in info.value.reason


def test_missing_directory_and_unreadable(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path / "dir.jpg")


def test_decode_bytes_directly():
    ok, data = cv2.imencode(".png", cv2.cvtColor(_gradient(), cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_image(data.tobytes()), _gradient())
