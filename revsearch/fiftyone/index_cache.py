"""Process-level cache of in-memory indexes (K-means IVF, exact) loaded from brain runs.

FiftyOne keeps a dataset's loaded brain results only while the dataset object and its small
results cache live; re-loading a run decodes and re-groups every vector. This cache keeps the
index handle per (dataset, brain key), tagged with the version of the run's saved results
(:meth:`~revsearch.fiftyone.run_store.RunStore.version`), so a changed run is never served stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from revsearch.fiftyone.index_handle import IndexHandle
from revsearch.fiftyone.run_store import RunStore

#: Indexes kept (least recently used dropped first).
MAX_ENTRIES = 4

_entries: OrderedDict[tuple[str, str], tuple[str, IndexHandle]] = OrderedDict()
_mutex = threading.Lock()


def _key(samples, brain_key: str) -> tuple[str, str]:
    return str(samples._root_dataset._doc.id), brain_key


def load(samples, brain_key: str, build: Callable[[], IndexHandle]) -> IndexHandle:
    """The cached handle of this run version, or ``build()`` (then cached)."""
    version = RunStore.version(samples, brain_key)
    if version is None:
        return build()
    key = _key(samples, brain_key)
    with _mutex:
        entry = _entries.get(key)
        if entry is not None and entry[0] == version:
            _entries.move_to_end(key)
            return entry[1]
    handle = build()
    remember(samples, brain_key, handle, version)
    return handle


def remember(samples, brain_key: str, handle: IndexHandle, version: str | None = None) -> None:
    """Cache ``handle`` as the index of the run's current saved version (after a save)."""
    version = version or RunStore.version(samples, brain_key)
    if version is None:
        return
    with _mutex:
        _entries[_key(samples, brain_key)] = (version, handle)
        _entries.move_to_end(_key(samples, brain_key))
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)


def forget(samples, brain_key: str) -> None:
    """Drop the run's cached index (it is being changed)."""
    with _mutex:
        _entries.pop(_key(samples, brain_key), None)
