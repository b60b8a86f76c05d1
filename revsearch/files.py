"""Find image files in folders."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .bmp .gif .webp .tif .tiff .heic .heif .avif .jfif .pgm .ppm".split())


def list_images(roots: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute paths of files with an image extension under ``roots`` (recursive, sorted; no symlinked or
    hidden folders). Entries that only look like images (broken links...) are returned, to be reported."""
    return scan_images(roots)[0]


def scan_images(roots: Iterable[str | os.PathLike]) -> tuple[list[str], dict[str, str]]:
    """:func:`list_images`, plus the folders that could not be read, each with the reason."""
    found: set[str] = set()
    unreadable: dict[str, str] = {}

    def note(error: OSError) -> None:
        unreadable[os.path.abspath(error.filename)] = f"cannot read folder: {error.strerror or error}"

    for root in map(Path, roots):
        if root.is_file() or root.suffix.lower() in IMAGE_EXTENSIONS and not root.is_dir():
            found.add(os.path.abspath(root))
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder or file")
        for folder, dirs, names in os.walk(root, onerror=note, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") or Path(d).suffix.lower() in IMAGE_EXTENSIONS)
            entries = names + [d for d in dirs if Path(d).suffix.lower() in IMAGE_EXTENSIONS]
            for name in entries:
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    found.add(os.path.abspath(os.path.join(folder, name)))
    return sorted(found), unreadable


def file_signature(path: str | os.PathLike) -> list[float] | None:
    """(size, mtime) of a file, to notice it changed since it was indexed; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime]


def stale_files(recorded: Iterable[tuple[str, str, list[float] | None]]) -> dict[str, list[str]]:
    """Of ``(key, path, signature when indexed)``, the keys whose file is now missing or changed."""
    missing, changed = [], []
    for key, path, signature in recorded:
        now = file_signature(path)
        if now is None:
            missing.append(key)
        elif now != signature:
            changed.append(key)
    return {"missing": missing, "changed": changed}
