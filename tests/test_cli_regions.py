"""Region search on the command line, run as a user would: ``revsearch index --regions`` then
``revsearch query crop.jpg --regions`` finds the photo an object crop was pasted into, prints and draws
the matched box; updates keep the region entries in step; bad queries fail in one line. Real Caltech
photos, MobileNetV2 weights from the team share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import MOBILENET_FILE, TORCH_CACHE, caltech_subset
from revsearch import SearchIndex
from revsearch.cli.mosaic import BOX_COLOUR
from revsearch.retrieval.regions import region_keys

MODEL = ["--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1"]
#: The pasted object's box in the composite (relative x, y, width, height), as tests/plugin/test_regions.py.
PASTED = (0.45, 0.45, 0.5, 0.5)
#: Entries per image at the default 224-pixel input: the whole image and 13 regions.
PER_IMAGE = 14
TILE = 192


def _run(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_HOME": str(TORCH_CACHE)}
    return subprocess.run(
        [sys.executable, "-m", "revsearch", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def _index(folder: Path, index_dir: Path, *options: str) -> str:
    """What ``revsearch index FOLDER --index-dir INDEX_DIR --quiet OPTIONS`` prints (it must succeed)."""
    return _ok(_run("index", folder, "--index-dir", index_dir, "--quiet", *options, cwd=index_dir.parent))


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("revsearch: error: ") and all(w in lines[0] for w in words), lines[0]


def iou(a, b) -> float:
    inter = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])) * max(
        0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    )
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _write(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path, tuple[float, ...]]:
    """A folder of 20 photos: a Leopards photo pasted at a quarter of the area into the bottom right of
    an airplane photo, the untouched airplane photo and 18 others; the leopard crop (not in the folder)
    and the pasted box (relative x, y, width, height)."""
    if not MOBILENET_FILE.exists():
        pytest.skip(f"pretrained MobileNetV2 weights not found at {MOBILENET_FILE}")
    subset = caltech_subset()[:19]
    leopard = caltech_subset(("Leopards",), 1)[0]
    folder, root = tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("crop")
    for p in subset:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    background = cv2.cvtColor(cv2.imread(str(subset[0])), cv2.COLOR_BGR2RGB)
    obj = cv2.cvtColor(cv2.imread(str(leopard)), cv2.COLOR_BGR2RGB)
    h, w = background.shape[:2]
    x, y, bw, bh = (int(v * s) for v, s in zip(PASTED, (w, h, w, h)))
    background[y : y + bh, x : x + bw] = cv2.resize(obj, (bw, bh), interpolation=cv2.INTER_AREA)
    _write(folder / "composite.jpg", background)
    return folder, _write(root / "leopard.jpg", obj), (x / w, y / h, bw / w, bh / h)


@pytest.fixture(scope="module")
def indexed(request, photos, tmp_path_factory) -> Path:
    """The photos indexed with regions, in an index of the kind ``request.param``."""
    index_dir = tmp_path_factory.mktemp(f"index_{request.param}")
    out = _index(photos[0], index_dir, "--backend", request.param, "--regions", *MODEL)
    assert f"20 vectors, {20 * PER_IMAGE} region vectors" in out
    return index_dir


def _drawn_box(mosaic_path: Path, rank: int, image_shape: tuple[int, ...]) -> tuple[float, ...]:
    """The box drawn on the tile of hit ``rank`` of a mosaic, relative to the image in the tile."""
    mosaic = cv2.cvtColor(cv2.imread(str(mosaic_path)), cv2.COLOR_BGR2RGB)
    tile = mosaic[:TILE, rank * TILE : (rank + 1) * TILE]
    ys, xs = np.nonzero(np.all(tile == BOX_COLOUR, axis=2))
    assert len(xs), "no box drawn"
    h, w = image_shape[:2]
    scale = TILE / max(h, w)
    rw, rh = round(w * scale), round(h * scale)
    x0, y0 = (TILE - rw) // 2, (TILE - rh) // 2
    return ((xs.min() - x0) / rw, (ys.min() - y0) / rh, (xs.max() + 1 - xs.min()) / rw, (ys.max() + 1 - ys.min()) / rh)


@pytest.mark.parametrize("indexed", ["exact", pytest.param("milvus", marks=pytest.mark.slow)], indirect=True)
def test_a_crop_finds_the_photo_it_was_pasted_into_and_the_box_is_printed_and_drawn(indexed, photos, tmp_path):
    folder, crop, pasted = photos
    done = _run("query", crop, "--regions", "-k", "3", "--index-dir", indexed, "--out", "hits.png", cwd=tmp_path)
    lines = _ok(done).splitlines()[:3]
    rank, _, box, path = lines[0].split(maxsplit=3)
    assert rank == "1" and path == str(folder / "composite.jpg"), lines
    printed = [float(v) for v in box.removeprefix("box=").split(",")]
    assert iou(printed, pasted) > 0
    composite = cv2.imread(path)
    assert iou(_drawn_box(tmp_path / "hits.png", 1, composite.shape), printed) > 0.8  # the printed box, drawn


def test_updates_keep_the_region_entries_in_step(photos, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    files = sorted(photos[0].glob("*.jpg"))
    for p in files[:5]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_text("not an image")  # a batch of one image that fails: no vectors
    index_dir = tmp_path / "index"
    _index(folder, index_dir, "--backend", "exact", "--regions", "--batch-size", "1", *MODEL)
    (folder / files[0].name).unlink()
    shutil.copy(files[7], folder / files[7].name)
    out = _index(folder, index_dir)
    assert "1 indexed, 4 unchanged, 1 removed, 1 skipped" in out
    assert f"5 vectors, {5 * PER_IMAGE} region vectors" in out
    info = json.loads(_ok(_run("info", "--index-dir", index_dir, cwd=tmp_path)))
    assert info["consistent"] and info["region_vectors"] == 5 * PER_IMAGE
    hits = _run("query", files[7], "--regions", "-k", "10", "--json", "--index-dir", index_dir, cwd=tmp_path)
    hits = json.loads(_ok(hits))
    assert all(set(h) == {"path", "distance", "region", "box"} for h in hits)
    found = [h["path"] for h in hits]
    assert found[0] == str(folder / files[7].name)  # the new photo's regions are searched
    assert sorted(found) == sorted(str(p) for p in folder.glob("*_image_*.jpg"))  # the removed photo's are gone


@pytest.mark.parametrize("indexed", ["exact"], indirect=True)
def test_info_finds_region_entries_that_do_not_match_the_manifest(indexed, tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    shutil.copytree(indexed, index_dir)
    healthy = _run("info", "--index-dir", index_dir, cwd=tmp_path)
    info = json.loads(_ok(healthy))
    assert info["consistent"] and not healthy.stderr, healthy.stderr
    assert info["regions_only_in_store"] == info["regions_only_in_manifest"] == info["regions_incomplete"] == 0

    monkeypatch.setenv("TORCH_HOME", str(TORCH_CACHE))
    index = SearchIndex.load(index_dir)  # damaged on purpose, then committed as it is
    first, second, third = sorted(index.items)[:3]
    store = index.regions.index
    store.remove(region_keys(first, PER_IMAGE))  # an indexed photo without region entries
    store.remove([f"{second}:3"])  # one with a region missing
    store.add([f"{tmp_path / 'gone.jpg'}:0"], store.vectors([f"{third}:0"]))  # entries of a file not indexed
    index.save()
    index.close()

    damaged = _run("info", "--index-dir", index_dir, cwd=tmp_path)
    info = json.loads(damaged.stdout)
    assert damaged.returncode == 1 and not info["consistent"] and info["only_in_store"] == 0
    assert (info["regions_only_in_manifest"], info["regions_only_in_store"], info["regions_incomplete"]) == (1, 1, 1)
    lines = damaged.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in damaged.stderr, damaged.stderr
    assert "region entries do not match the manifest" in lines[0], lines[0]
    assert lines[0].endswith("rebuild with revsearch index FOLDER --rebuild"), lines[0]


@pytest.mark.parametrize("indexed", ["exact"], indirect=True)
def test_bad_region_queries_fail_in_one_line(indexed, photos, tmp_path):
    _, crop, _ = photos
    tiny = _write(tmp_path / "tiny.jpg", np.full((20, 200, 3), 128, np.uint8))
    _one_line_error(_run("query", tiny, "--regions", "--index-dir", indexed, cwd=tmp_path), "200x20 px", "32 px")
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    _one_line_error(_run("query", broken, "--regions", "--index-dir", indexed, cwd=tmp_path), "broken.jpg")
    copy_mode = _run("query", crop, "--regions", "--mode", "copy", "--index-dir", indexed, cwd=tmp_path)
    _one_line_error(copy_mode, "--regions", "--mode")


def test_an_index_without_regions_says_how_to_get_them(photos, tmp_path):
    folder, crop, _ = photos
    plain = ["--features", "pixel", "--pixel-size", "8", "--backend", "exact"]
    _index(folder, tmp_path / "plain", *plain)
    query = _run("query", crop, "--regions", "--index-dir", tmp_path / "plain", cwd=tmp_path)
    _one_line_error(query, "holds no regions", "--rebuild --regions")
    update = _run("index", folder, "--index-dir", tmp_path / "plain", "--regions", "--quiet", cwd=tmp_path)
    _one_line_error(update, "built without regions", "--rebuild")
    pixel = _run("index", folder, "--index-dir", tmp_path / "pixel", *plain, "--regions", cwd=tmp_path)
    _one_line_error(pixel, "choose cnn features")
    assert not (tmp_path / "pixel" / "manifest.json").exists()
