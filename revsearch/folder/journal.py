"""The redo record of an incremental update, written before the vector store is touched.

An update records what it is about to do, changes the store, commits a new manifest, then deletes
the record; a run killed in between leaves it, and the next run replays it first (idempotent).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revsearch.crashpoints import write_point
from revsearch.folder.atomic import fsync_dir, write_atomic
from revsearch.folder.generations import JOURNAL, damaged

#: The arrays of an update (the rest is JSON); a journal written before regions has no region_vectors.
_ARRAYS = ("vectors", "region_vectors")


@dataclass
class Update:
    """One transaction on an index: delete ``remove``, upsert ``keys`` with ``vectors`` (and, in an
    index of regions, their ``region_vectors``: each key's entries, in order)."""

    base_generation: int
    remove: list[str]
    keys: list[str]
    vectors: np.ndarray
    items: dict[str, dict]
    failures: dict[str, str]
    forget_failures: list[str]
    roots: list[str] | None = None
    region_vectors: np.ndarray | None = None

    def is_empty(self, failures: dict[str, str]) -> bool:
        """True if applying it would change nothing (given the index's current ``failures``)."""
        return (
            not self.remove
            and not self.keys
            and self.roots is None
            and not any(k in failures for k in self.forget_failures)
            and all(failures.get(k) == r for k, r in self.failures.items())
        )


def write_journal(directory: Path, update: Update) -> None:
    """Durably record ``update`` before any of it is applied."""
    arrays = {name: getattr(update, name) for name in _ARRAYS if getattr(update, name) is not None}
    meta = {name: value for name, value in vars(update).items() if name not in _ARRAYS}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta=np.array(json.dumps(meta)))
    write_atomic(directory / JOURNAL, buffer.getvalue())


def read_journal(directory: Path) -> Update | None:
    """The update left by a run that did not finish, or None."""
    path = directory / JOURNAL
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in _ARRAYS if name in data.files}
            return Update(**arrays, **json.loads(str(data["meta"])))
    except Exception as exc:  # empty, garbage, or not an update record
        raise damaged(path, f"not an update record: {type(exc).__name__}: {exc}") from None


def clear_journal(directory: Path) -> None:
    """The update is committed: forget its record."""
    path = directory / JOURNAL
    if path.exists():
        path.unlink()
        fsync_dir(directory)
        write_point("journal cleared")
