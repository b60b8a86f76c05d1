"""``--rebuild`` recovers from any damaged part of an index folder: it moves the part aside (never deletes
it), says so, and builds anew; stored files carry checksums, and indexes saved before them still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_no_traceback import OPTIONS, damage, run

from helpers import caltech_subset
from revsearch import SearchIndex
from revsearch.errors import DamagedFileError

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("img")
    for p in caltech_subset()[:6]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    return folder


@pytest.mark.parametrize(
    "name", ["manifest.json", "pending.json", "journal.npz", "gen-1/vectors.npy", "gen-1/vectors.keys.json"]
)
def test_rebuild_moves_the_damaged_part_aside_and_builds_anew(name, images, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    assert run(capsys, "index", images, "--backend", "exact", "--index-dir", index_dir, *OPTIONS)[0] == 0
    damage(index_dir / name, "garbage")
    rc, out, err = run(capsys, "index", images, "--rebuild", "--backend", "exact", "--index-dir", index_dir, *OPTIONS)
    assert rc == 0, err
    assert f"note: moved the damaged {index_dir / name} (" in out or f"has a damaged file, {index_dir / name}" in out
    (aside,) = index_dir.glob("damaged-*")
    assert (aside / name).read_bytes() == b"\xff\x00garbage{,"  # kept as it was
    query = sorted(images.iterdir())[0]
    rc, out, err = run(capsys, "query", query, "-k", "1", "--json", "--index-dir", index_dir)
    assert rc == 0 and json.loads(out)[0]["path"] == str(query), err
    left = {p.name for p in index_dir.iterdir() if not p.name.startswith(".")} - {aside.name}
    assert len(left) == 2 and "manifest.json" in left and len(list(index_dir.glob("gen-*"))) == 1


def test_an_index_saved_before_checksums_loads_and_records_them_on_its_next_write(tmp_path):
    folder = tmp_path / "exact"
    shutil.copytree(LEGACY / "folder" / "exact", folder)
    assert "checksums" not in json.loads((folder / "manifest.json").read_text())
    index = SearchIndex.load(folder)  # not checked: nothing recorded
    index.save()
    checksums = json.loads((folder / "manifest.json").read_text())["checksums"]
    assert {"vectors.npy", "vectors.keys.json"} <= set(checksums)
    damage(folder / "gen-2" / "vectors.npy", "flipped")
    with pytest.raises(DamagedFileError, match="vectors.npy is damaged .*checksum mismatch"):
        SearchIndex.load(folder)
