"""Layout of an index directory, and the records that make a build switch generations atomically.

::

    manifest.json   the commit point: names the live generation, its files and its Milvus collection
    gen-<n>/        the live generation's files (vectors, K-means lists, PCA; regions/: those of the
                    region entries); older ones are deleted
    pending.json    a build in progress: its new Milvus collection, and the old one to drop after it
                    (each with its collection of region entries, in an index of regions)
    journal.npz     an update in progress (see :mod:`revsearch.folder.journal`)
    partial/        the embedding checkpoint of a build (see :mod:`revsearch.folder.checkpoint`)
    .lock           held by the one process updating the index (see :mod:`revsearch.locks`)
    damaged-<time>/ parts a ``--rebuild`` found damaged and moved aside (never deleted)

A build writes ``pending.json`` before it creates its collection: after a crash, the next run drops
the half-filled collection (not committed) or the old one (committed), so nothing is orphaned.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from revsearch.crashpoints import write_point
from revsearch.errors import DamagedFileError, IndexNotFoundError, RevsearchError
from revsearch.folder.atomic import checksum, fsync_dir, write_atomic
from revsearch.index.milvus_uri import is_lite_uri
from revsearch.retrieval.regions import REGIONS_SUFFIX

MANIFEST = "manifest.json"
#: Where the command line keeps an index unless told (``--index-dir``).
DEFAULT_INDEX_DIR = ".revsearch"
PENDING = "pending.json"
#: An update in progress (written and read by :mod:`revsearch.folder.journal`).
JOURNAL = "journal.npz"
CHECKPOINT = "partial"
#: 3: the PCA is saved as pca.json (its state form); 2 wrote pca.npz, still read.
FORMAT_VERSION = 3
REQUIRED_KEYS = ("extractor", "pca", "backend", "items", "failures")
#: Files of format 1, kept in the index directory itself; deleted once a new generation is committed.
_FORMAT1_FILES = ("vectors.npy", "vectors.keys.json", "ivf.npz", "pca.npz")


def generation_dir(directory: Path, generation: int) -> Path:
    return directory / f"gen-{generation}"


def damaged(path: Path, why: str) -> DamagedFileError:
    """The error for a damaged index file: names the file and the fix."""
    return DamagedFileError(path, why)


def verify_files(folder: Path, checksums: dict[str, str]) -> None:
    """Raise :class:`DamagedFileError` for the first file of ``folder`` missing or unlike its checksum."""
    for name, digest in checksums.items():
        path = folder / name
        if not path.is_file():
            raise damaged(path, "missing")
        if checksum(path) != digest:
            raise damaged(path, "its bytes changed since it was written: checksum mismatch")


def lite_file_problem(path: Path) -> str | None:
    """Why a Milvus Lite file (an SQLite database) is damaged, from its header and size, or None if it looks
    sound or is absent (cheap: nothing but the first 100 bytes is read)."""
    try:
        with open(path, "rb") as f:
            header, size = f.read(100), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None
    if not size:
        return "empty"
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return "not a Milvus Lite file"
    page = int.from_bytes(header[16:18], "big")
    expected = (65536 if page == 1 else page) * int.from_bytes(header[28:32], "big")
    return f"truncated: {size} of {expected} bytes" if size < expected else None


def set_aside(directory: Path, path: Path, reason: str) -> str:
    """Move a damaged file or folder into ``damaged-<time>/`` in ``directory`` (never deleted); returns a note."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    place = Path(path).relative_to(directory) if Path(path).is_relative_to(directory) else Path(Path(path).name)
    target = directory / f"damaged-{stamp}" / place
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    fsync_dir(directory)
    return f"moved the damaged {path} ({reason}) to {target}"


def read_manifest(directory: Path) -> dict:
    """The committed manifest, checked for the keys every index needs; errors name the file and the fix."""
    path = directory / MANIFEST
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise IndexNotFoundError(f"no revsearch index in {directory} (missing {MANIFEST})") from None
    except OSError as exc:
        raise RevsearchError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(data)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise damaged(path, f"not valid JSON: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise damaged(path, f"no {', '.join(missing)}")
    return manifest


def resolve_lite_uri(directory: Path, config: dict) -> dict:
    """``config`` with a relative Lite URI (format 1 stored it as typed) made absolute, in the index dir."""
    uri = config["uri"]
    if not is_lite_uri(uri) or os.path.isabs(uri):
        return config
    return {**config, "uri": str(directory / Path(uri).name)}


def needs_recovery(directory: Path) -> bool:
    """True if a crashed run left something behind: a journal, a pending build, an old generation."""
    return (
        (directory / JOURNAL).exists()
        or (directory / PENDING).exists()
        or (directory / (MANIFEST + ".tmp")).exists()
        or len(list(directory.glob("gen-*"))) > 1
    )


def write_pending(directory: Path, generation: int, new: dict, old: dict | None) -> None:
    """Record a build's new collection (and the old one it replaces) before creating it."""
    write_atomic(directory / PENDING, json.dumps({"generation": generation, "new": new, "old": old}).encode())


def settle_pending(directory: Path, committed_generation: int, token: str = "") -> None:
    """Finish a build's switch: if it committed, delete its checkpoint and drop the old collection;
    if not, drop its half-filled collection (its checkpoint stays, for the re-run to resume)."""
    path = directory / PENDING
    if not path.exists():
        return
    try:
        pending = json.loads(path.read_bytes())
        generation, new, old = pending["generation"], pending["new"], pending["old"]
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(path, f"not a build record: {type(exc).__name__}: {exc}") from None
    committed = generation == committed_generation
    if committed and (directory / CHECKPOINT).exists():
        shutil.rmtree(directory / CHECKPOINT)
        write_point("checkpoint cleared")
    drop = (old if old != new else None) if committed else new  # never the collection the manifest names
    if drop is not None:
        lite = Path(drop["uri"]) if is_lite_uri(drop["uri"]) else None
        if lite is not None and (problem := lite_file_problem(lite)):
            raise damaged(lite, problem)
        from revsearch.index.milvus import drop_collection  # pymilvus only when there is a collection to drop

        names = [drop["collection"]] + ([drop["collection"] + REGIONS_SUFFIX] if drop.get("regions") else [])
        for name in names:
            drop_collection(drop["uri"], name, token, drop.get("db_name", ""))
        write_point("collection of another generation dropped")
    path.unlink()
    fsync_dir(directory)
    write_point("pending build settled")


def remove_old_generations(directory: Path, generation: int) -> None:
    """Delete every generation's files but ``generation``'s, and leftovers of interrupted writes."""
    keep = generation_dir(directory, generation).name
    for folder in sorted(directory.glob("gen-*")):
        if folder.name != keep:
            shutil.rmtree(folder)
            write_point("old generation files removed")
    if generation:
        for name in _FORMAT1_FILES:
            (directory / name).unlink(missing_ok=True)
    (directory / (MANIFEST + ".tmp")).unlink(missing_ok=True)
