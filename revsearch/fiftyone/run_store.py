"""A brain run's persistence beyond FiftyOne's results JSON (:class:`RunStore`).

FiftyOne parses a run's whole results JSON on every load (at 1M vectors, hundreds of MB of base64).
Here each array of at least :data:`INLINE_BYTES` bytes is stored once, named by the sha256 of its
``.npy`` bytes, in the GridFS bucket :data:`BUCKET`; the JSON holds a reference (:func:`pack`), and a
process memory-maps the array from its local cache ``$REVSEARCH_CACHE/arrays/<sha256>.npy``, fetched
from the database where missing (:func:`unpack`). A run lists its arrays in its ``results_meta``,
which FiftyOne copies when a dataset is cloned; an array is deleted once no run lists it
(:func:`collect_garbage`). A save stores the arrays before FiftyOne replaces the results
(:meth:`RunStore.save`); serialising or printing results stores nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from revsearch.array_codec import encode_array
from revsearch.crashpoints import write_point
from revsearch.errors import RevsearchError

#: GridFS bucket (in FiftyOne's database) holding the arrays.
BUCKET = "revsearch_arrays"
#: ``results_meta`` field listing the arrays a run refers to.
META_FIELD = "revsearch_arrays"
#: Arrays smaller than this stay inline in the results JSON (as :func:`~revsearch.array_codec.encode_array`).
INLINE_BYTES = 1 << 20
#: Key lists at least this long are stored as arrays too.
INLINE_KEYS = 4096
#: Unreferenced arrays younger than this are kept (a save in another process may be about to list them).
GRACE_S = 3600.0
#: Local cache size (bytes) above which the least recently used arrays are removed.
CACHE_LIMIT_BYTES = int(float(os.environ.get("REVSEARCH_ARRAY_CACHE_GB", "20")) * 2**30)
_REF = "$revsearch_array"
_CHUNK = 8 << 20


class MissingRunArrayError(RevsearchError):
    """An array a brain run refers to is neither in FiftyOne's database nor in the local cache."""


def cache_dir() -> Path:
    """``$REVSEARCH_CACHE/arrays`` (default ``~/.cache/revsearch/arrays``)."""
    return Path(os.environ.get("REVSEARCH_CACHE", Path.home() / ".cache" / "revsearch")) / "arrays"


def _db():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()


def _bucket():
    import gridfs

    return gridfs.GridFSBucket(_db(), bucket_name=BUCKET)


# ---- a run's persistence ------------------------------------------------------------------------
class RunStore:
    """The one place that knows FiftyOne's run document (``results``, ``results_meta``) and save order.

    ``states``: gives the results' attributes that hold arrays (arrays as they are); ``packed``: those
    attributes as a loaded run's JSON holds them (None: a new run).
    """

    def __init__(self, states: Callable[[], dict[str, Any]], packed: dict[str, Any] | None = None):
        self._states, self._packed = states, packed

    @property
    def packed(self) -> dict[str, Any]:
        """The attributes as saved, or (changed since) with the references a save will store; stores nothing."""
        if self._packed is None:
            self._packed = pack(self._states(), store=False)
        return self._packed

    def changed(self) -> None:
        """The results changed since they were saved."""
        self._packed = None

    def save(self, samples, key: str, save_results: Callable[[], None]) -> None:
        """Store the arrays, then ``save_results()`` (FiftyOne's save: it deletes the old results before it
        writes the new), then delete the previous save's arrays that no run lists any more."""
        before = set(_listed(_run_doc(samples, key)))
        self._packed = pack(self._states())
        save_results()
        write_point("brain run saved")
        collect_garbage(before - set(names_in(self._packed)))

    @staticmethod
    def delete(samples, key: str, cleanup: Callable[[], None]) -> None:
        """``cleanup()`` the run being deleted, then delete its arrays that no other run (a clone's) lists."""
        run_doc = _run_doc(samples, key)
        try:
            cleanup()
        finally:
            collect_garbage(_listed(run_doc), excluding_run=run_doc.id)

    @staticmethod
    def version(samples, key: str) -> str | None:
        """The id of the run's results file (FiftyOne writes a new one on every save); None if none."""
        try:
            grid_id = getattr(_run_doc(samples, key).results, "grid_id", None)
        except Exception:
            return None
        return str(grid_id) if grid_id is not None else None


def _run_doc(samples, key: str):
    from fiftyone.core.brain import BrainMethod

    return BrainMethod._get_run_doc(samples, key)


def _listed(run_doc) -> list[str]:
    return (run_doc.results_meta or {}).get(META_FIELD) or []


# ---- pack / unpack ------------------------------------------------------------------------------
def pack(state: Any, store: bool = True) -> Any:
    """``state`` made JSON-able: large arrays (and long key lists) replaced by references, and stored
    (with ``store=False`` only named); small arrays inline."""
    name = put if store else _npy_sha

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return encode_array(value) if value.nbytes < INLINE_BYTES else {_REF: name(value)}
        if isinstance(value, list) and len(value) >= INLINE_KEYS and all(isinstance(v, str) for v in value):
            return {_REF: name(np.array(value, dtype=str)), "as_list": True}
        return value

    return walk(state)


def unpack(state: Any) -> Any:
    """Inverse of :func:`pack`: references replaced by memory-mapped arrays (key lists by lists)."""
    if isinstance(state, dict):
        if _REF in state:
            array = load(state[_REF])
            return array.tolist() if state.get("as_list") else array
        return {k: unpack(v) for k, v in state.items()}
    return state


def names_in(state: Any) -> list[str]:
    """The names of the arrays a packed ``state`` refers to (nothing is read)."""
    if not isinstance(state, dict):
        return []
    if _REF in state:
        return [state[_REF]]
    return [name for value in state.values() for name in names_in(value)]


# ---- one array ----------------------------------------------------------------------------------
def _npy_sha(array: np.ndarray, file=None) -> str:
    """The sha256 of ``array``'s ``.npy`` bytes (its name), written to ``file`` too if given."""
    sha = hashlib.sha256()

    def write(data) -> int:
        sha.update(data)
        return file.write(data) if file else len(data)

    np.save(SimpleNamespace(write=write), np.ascontiguousarray(array), allow_pickle=False)
    return sha.hexdigest()


def _cache_path(name: str) -> Path:
    return cache_dir() / f"{name}.npy"


@contextlib.contextmanager
def _new_cache_file():
    """A temporary file in the cache folder (removed unless renamed)."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file, Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def put(array: np.ndarray) -> str:
    """Store ``array`` (cache and database, each once); returns its name (sha256 of its .npy bytes)."""
    with _new_cache_file() as (file, tmp):
        name = _npy_sha(array, file)
        file.flush()
        os.fsync(file.fileno())
        os.replace(tmp, _cache_path(name))
        write_point("run array cached")
    bucket = _bucket()
    if not any(True for _ in bucket.find({"filename": name}, limit=1)):
        with open(_cache_path(name), "rb") as source:
            bucket.upload_from_stream(name, source, chunk_size_bytes=_CHUNK // 8)
        write_point("run array stored")
    _trim_cache()
    return name


def load(name: str) -> np.ndarray:
    """The array ``name``, memory-mapped copy-on-write from the local cache (fetched first if absent)."""
    path = _cache_path(name)
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):  # absent, or damaged outside revsearch: fetch it again
        _fetch(name)
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    with contextlib.suppress(OSError):
        os.utime(path)  # least recently used is trimmed first
    return array


def _fetch(name: str) -> None:
    """Copy array ``name`` from the database into the cache, checking its sha256."""
    import gridfs.errors

    with _new_cache_file() as (file, tmp):
        try:
            stream = _bucket().open_download_stream_by_name(name)
        except gridfs.errors.NoFile:
            raise MissingRunArrayError(
                f"array {name} of this brain run is neither in FiftyOne's database (GridFS bucket "
                f"{BUCKET!r}) nor in {cache_dir()}; re-run compute_similarity for this brain key"
            ) from None
        sha = hashlib.sha256()
        with stream:
            while chunk := stream.read(_CHUNK):
                sha.update(chunk)
                file.write(chunk)
        if sha.hexdigest() != name:
            raise MissingRunArrayError(f"array {name} in FiftyOne's database is damaged (sha256 {sha.hexdigest()})")
        file.flush()
        os.replace(tmp, _cache_path(name))
    _trim_cache()


def _trim_cache() -> None:
    """Remove the least recently used cached arrays above :data:`CACHE_LIMIT_BYTES`, and old partial files."""
    files = []
    for path in cache_dir().glob("*"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            if path.suffix == ".part":
                if stat.st_mtime < time.time() - GRACE_S:
                    path.unlink()
            else:
                files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= CACHE_LIMIT_BYTES:
            break
        path.unlink(missing_ok=True)  # a process that has it mapped keeps reading it
        total -= size


# ---- references ---------------------------------------------------------------------------------
def referenced(excluding_run=None) -> set[str]:
    """Names of the arrays listed by any run of any dataset (optionally not counting one run document)."""
    query = {"_id": {"$ne": excluding_run}} if excluding_run is not None else {}
    return set(_db().runs.distinct(f"results_meta.{META_FIELD}", query))


def collect_garbage(dropped: Iterable[str] = (), excluding_run=None) -> list[str]:
    """Delete stored arrays that no run lists: those in ``dropped`` at once, others (and the chunks
    of uploads that never finished) after :data:`GRACE_S`. ``excluding_run``: a run document being
    deleted. Returns the names deleted."""
    dropped = set(dropped)
    keep = referenced(excluding_run)
    cutoff = time.time() - GRACE_S
    bucket, deleted = _bucket(), []
    for doc in _db()[f"{BUCKET}.files"].find({}, {"filename": 1, "uploadDate": 1}):
        name = doc["filename"]
        uploaded = doc["uploadDate"].replace(tzinfo=doc["uploadDate"].tzinfo or timezone.utc).timestamp()
        if name in keep or (name not in dropped and uploaded > cutoff):
            continue
        bucket.delete(doc["_id"])
        _cache_path(name).unlink(missing_ok=True)
        write_point("run array deleted")
        deleted.append(name)
    files, chunks = _db()[f"{BUCKET}.files"], _db()[f"{BUCKET}.chunks"]
    finished = set(files.distinct("_id"))
    for file_id in chunks.distinct("files_id"):
        if file_id not in finished and file_id.generation_time.timestamp() < cutoff:
            chunks.delete_many({"files_id": file_id})
    return deleted
