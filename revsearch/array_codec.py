"""The one JSON-able form of a numpy array: ``.npy`` bytes, zlib-compressed, base64 (eta's format), used
by brain runs, field info and folder indexes; ``decode_array`` also reads plain nested lists (older PCA)."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np


def encode_array(array: np.ndarray) -> str:
    """A string holding ``array`` exactly (dtype and shape included)."""
    with io.BytesIO() as buffer:
        np.save(buffer, np.asarray(array), allow_pickle=False)
        return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")


def encode_arrays(state):
    """``state`` with every array in it (at any depth of dicts) replaced by :func:`encode_array`."""
    if isinstance(state, dict):
        return {k: encode_arrays(v) for k, v in state.items()}
    return encode_array(state) if isinstance(state, np.ndarray) else state


def decode_array(value: str | list | np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_array` (a list is read as the array it spells; an array is returned as is)."""
    if not isinstance(value, str):
        return np.asarray(value)
    with io.BytesIO(zlib.decompress(base64.b64decode(value.encode("ascii")))) as buffer:
        return np.load(buffer, allow_pickle=False)
