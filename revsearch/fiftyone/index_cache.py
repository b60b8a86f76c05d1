"""Process-level cache of in-memory indexes (K-means IVF, exact) loaded from brain runs.

FiftyOne keeps a dataset's loaded brain results only while the dataset object and its small
results cache live; re-loading a run decodes and re-groups every vector. This cache keeps the
built index per (dataset, brain key), tagged with the version of the run's stored results (the
id of the GridFS file FiftyOne writes on every save), so a changed run is never served stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

#: Indexes kept (least recently used dropped first).
MAX_ENTRIES = 4

Store = TypeVar("Store")
_entries: OrderedDict[tuple[str, str], tuple[str, object]] = OrderedDict()
_mutex = threading.Lock()


def run_version(samples, brain_key: str) -> str | None:
    """The version of the brain run's saved results (None if it has none)."""
    from fiftyone.core.brain import BrainMethod

    try:
        results = BrainMethod._get_run_doc(samples, brain_key).results
    except Exception:
        return None
    grid_id = getattr(results, "grid_id", None)
    return str(grid_id) if grid_id is not None else None


def _key(samples, brain_key: str) -> tuple[str, str]:
    return str(samples._root_dataset._doc.id), brain_key


def load(samples, brain_key: str, build: Callable[[], Store]) -> Store:
    """The cached index of this run version, or ``build()`` (then cached)."""
    version = run_version(samples, brain_key)
    if version is None:
        return build()
    key = _key(samples, brain_key)
    with _mutex:
        entry = _entries.get(key)
        if entry is not None and entry[0] == version:
            _entries.move_to_end(key)
            return entry[1]
    store = build()
    remember(samples, brain_key, store, version)
    return store


def remember(samples, brain_key: str, store: object, version: str | None = None) -> None:
    """Cache ``store`` as the index of the run's current saved version (after a save)."""
    version = version or run_version(samples, brain_key)
    if version is None:
        return
    with _mutex:
        _entries[_key(samples, brain_key)] = (version, store)
        _entries.move_to_end(_key(samples, brain_key))
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def forget(samples, brain_key: str) -> None:
    """Drop the run's cached index (it is being changed)."""
    with _mutex:
        _entries.pop(_key(samples, brain_key), None)
