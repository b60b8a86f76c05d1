"""Retrieval options stored with an index and applied at query time: alpha-QE, alpha-DBA, copy mode.

:class:`RetrievalOptions`: the user's choice (saved in the manifest / brain config); :class:`IndexExtras`:
the state it needs beside the vector store (DBA graph, thumbnails), saved and updated with the index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from revsearch.array_codec import decode_array
from revsearch.index.exact import ExactIndex
from revsearch.index.hits import Hit, nearest_of, squared_l2, top_k
from revsearch.retrieval.dba import DBAGraph
from revsearch.retrieval.fusion import ratio_fusion
from revsearch.retrieval.query_expansion import expanded_search

#: Query modes: ``similar`` (class-level: the stored options apply) and ``copy`` (CNN + pixel fusion).
MODES = ("similar", "copy")
#: How many hits of each ranking the copy mode fuses, the rank whose distance is each ranking's unit,
#: and the thumbnails' weight (above 1: they must be more sure than the CNN to win). Chosen on half
#: of the copy-detection sources (bench/results/retrieval_options.md).
COPY_TOP, COPY_REF_RANK, COPY_PIXEL_WEIGHT = 100, 5, 1.5


def copy_query_images(image: np.ndarray) -> list[np.ndarray]:
    """The images the copy mode embeds for one query: the image, and turned 180 degrees (strong edits' R@1
    0.785 -> 0.803 on half A, 0.780 -> 0.793 on half B: bench/copy_augmentation.py; mirroring gained nothing)."""
    return [image, np.ascontiguousarray(image[::-1, ::-1])]


@dataclass(frozen=True)
class RetrievalOptions:
    """``qe_n`` / ``dba_n`` neighbours (0: off), their ``alpha``; ``copy_pixels``: thumbnail side kept
    for the copy mode (0: no copy mode). Defaults: chosen in bench/results/retrieval_options.md."""

    qe_n: int = 3
    qe_alpha: float = 3.0
    dba_n: int = 3
    dba_alpha: float = 3.0
    copy_pixels: int = 16

    def __post_init__(self):
        for name in ("qe_n", "dba_n", "copy_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("qe_alpha", "dba_alpha"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in [0, 100], got {getattr(self, name)!r}")

    @classmethod
    def off(cls) -> RetrievalOptions:
        """No expansion, no augmentation, no copy mode (what indexes built before these options hold)."""
        return cls(qe_n=0, dba_n=0, copy_pixels=0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> RetrievalOptions:
        """Options from a manifest / config; None (an index from before the options) means all off."""
        if data is None:
            return cls.off()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _fuse(cnn_hits: list[Hit], pixel_hits: list[Hit], k: int) -> list[Hit]:
    """The copy mode's ranking: :func:`~revsearch.retrieval.fusion.ratio_fusion` of the CNN and thumbnail rankings."""
    return ratio_fusion([cnn_hits, pixel_hits], k, COPY_REF_RANK, [1.0, COPY_PIXEL_WEIGHT])


class IndexExtras:
    """The DBA graph (original vectors and neighbour lists) and the copy mode's thumbnails."""

    def __init__(
        self, options: RetrievalOptions, dim: int, dba: DBAGraph | None = None, pixels: ExactIndex | None = None
    ):
        self.options = options
        self.dba = dba if dba is not None or not options.dba_n else DBAGraph(options.dba_n, options.dba_alpha, dim)
        self.pixels = pixels
        if pixels is None and options.copy_pixels:
            self.pixels = ExactIndex(3 * options.copy_pixels**2, np.float32)

    # ---- updates --------------------------------------------------------------------------
    def store_vectors(
        self, remove: Sequence[str], keys: Sequence[str], vectors: np.ndarray
    ) -> tuple[list[str], np.ndarray]:
        """Take an update's (original) vectors; returns the keys and vectors the vector store must
        upsert: the same without DBA, with DBA every augmented vector that changed."""
        if self.dba is None:
            return list(keys), vectors
        changed = self.dba.update(list(keys), vectors, list(remove))
        return changed, self.dba.augmented(changed)

    def finish_build(self, store, held: list[tuple[list[str], np.ndarray]], chunk_size: int) -> None:
        """With DBA, a build holds back its (original) vectors: augment them all, then fill ``store``."""
        if self.dba is None or not held:
            return
        keys = [k for chunk_keys, _ in held for k in chunk_keys]
        self.dba.update(keys, np.concatenate([v for _, v in held]))
        for start in range(0, len(keys), chunk_size):
            store.add(keys[start : start + chunk_size], self.dba.augmented(keys[start : start + chunk_size]))

    def update_pixels(self, remove: Sequence[str], paths: dict[str, str]) -> None:
        """Drop ``remove`` and (re)compute the thumbnails of ``paths`` ({key: file}); a file that does
        not decode now just has no thumbnail (the copy mode then ranks it by the CNN alone)."""
        if self.pixels is None:
            return
        from revsearch.features.pixel import PixelFeatures

        gone = list(remove) + list(paths)
        if gone:
            self.pixels.remove(gone)
        keys = list(paths)
        if keys:
            batch = PixelFeatures(self.options.copy_pixels).embed_paths([paths[k] for k in keys], progress=False)
            if batch.indices:
                self.pixels.add([keys[i] for i in batch.indices], batch.vectors)

    # ---- queries --------------------------------------------------------------------------
    def search(self, backend, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The backend's search with alpha-QE when on (expanded with the stored, augmented vectors)."""
        n, alpha = self.options.qe_n, self.options.qe_alpha
        return expanded_search(backend.search, lambda keys: backend.vectors(list(keys)), queries, k, n, alpha)

    def copy_search(
        self,
        cnn_search: Callable[[np.ndarray, int], list[list[Hit]]],
        vectors: np.ndarray,
        image: np.ndarray,
        k: int,
        allowed: Collection[str] | None = None,
    ) -> list[Hit]:
        """The copy mode's fusion of the CNN ranking (no alpha-QE or DBA: measured, DBA loses copies) of
        ``vectors`` (:func:`copy_query_images`' embeddings) and the ranking by ``image``'s thumbnail, top
        COPY_TOP of each, among ``allowed``. ``cnn_search(vectors, top)``: the backend's search, without DBA."""
        self._require_pixels()
        from revsearch.features.pixel import PixelFeatures

        thumbnail = PixelFeatures(self.options.copy_pixels).embed_images([image])
        top = max(k, COPY_TOP)
        pixel_hits = self.pixels.search(thumbnail, top, allowed=allowed)[0] if len(self.pixels) else []
        return _fuse(nearest_of(self._cnn_search(cnn_search, vectors, top, allowed), top), pixel_hits, k)

    def copy_neighbours(
        self,
        cnn_search: Callable[[np.ndarray, int], list[list[Hit]]],
        keys: Sequence[str],
        vectors: np.ndarray,
        k: int,
        allowed: Collection[str] | None = None,
    ) -> list[list[Hit]]:
        """For each of the stored ``keys`` (original ``vectors``), its ``k`` nearest *other* keys among
        ``allowed`` by the copy mode's fusion, from the stored thumbnails (no image is decoded).
        ``cnn_search(vectors, top)`` is the backend's batch search, used when the index has no DBA."""
        self._require_pixels()
        top = max(k, COPY_TOP) + 1  # each key finds itself first
        cnn = self._cnn_search(cnn_search, vectors, top, allowed)
        has = self.pixels.contains(keys)
        with_thumbnail = [key for key in keys if key in has]
        found = self.pixels.search(self.pixels.vectors(with_thumbnail), top, allowed) if with_thumbnail else []
        pixel = dict(zip(with_thumbnail, found))
        return [
            _fuse([h for h in cnn_hits if h.key != key], [h for h in pixel.get(key, []) if h.key != key], k)
            for key, cnn_hits in zip(keys, cnn)
        ]

    def _require_pixels(self) -> None:
        if self.pixels is None:
            raise ValueError(
                "this index keeps no thumbnails for the copy mode: rebuild it with copy_pixels > 0 "
                "(revsearch index --rebuild --copy-pixels 16)"
            )

    def _cnn_search(self, cnn_search, vectors: np.ndarray, k: int, allowed: Collection[str] | None) -> list[list[Hit]]:
        """The CNN ranking of each vector: ``cnn_search`` without DBA, else an exact search over the
        DBA graph's original (not augmented) vectors among ``allowed``."""
        if self.dba is None:
            return cnn_search(vectors, k)
        rows = np.arange(len(self.dba)) if allowed is None else np.flatnonzero(np.isin(self.dba.keys, list(allowed)))
        originals = self.dba.vectors[rows]
        dist = squared_l2(np.asarray(vectors, np.float32), originals, np.einsum("ij,ij->i", originals, originals))
        return [[Hit(self.dba.keys[rows[i]], float(row[i])) for i in top_k(row, k)] for row in dist]

    # ---- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        if self.dba is not None:
            np.savez(folder / "dba.npz", **self.dba.state())
            (folder / "dba.keys.json").write_text(json.dumps(self.dba.keys))
        if self.pixels is not None:
            self.pixels.save(folder / "thumbnails")

    @classmethod
    def load(cls, folder: Path, options: RetrievalOptions, dim: int) -> IndexExtras:
        dba = pixels = None
        if options.dba_n:
            with np.load(folder / "dba.npz") as state:
                dba = DBAGraph.from_state(json.loads((folder / "dba.keys.json").read_text()), dict(state))
        if options.copy_pixels:
            pixels = ExactIndex.load(folder / "thumbnails", {"dim": 3 * options.copy_pixels**2, "dtype": "float32"})
        return cls(options, dim, dba, pixels)

    def arrays_state(self) -> dict:
        """The same state for a brain run, arrays as they are; thumbnails as bytes (their values are
        whole numbers 0-255), a quarter of their float size."""
        state: dict = {}
        if self.dba is not None:
            state["dba"] = {"keys": self.dba.keys, **self.dba.state()}
        if self.pixels is not None:
            keys = self.pixels.keys()
            state["pixels"] = {"keys": keys, "thumbnails": np.rint(self.pixels.vectors(keys)).astype(np.uint8)}
        return state

    @classmethod
    def from_state(cls, state: dict | None, options: RetrievalOptions, dim: int) -> IndexExtras:
        """Inverse of :meth:`arrays_state`; the parts ``state`` lacks (None: an older run) start empty."""
        state = state or {}
        dba = None
        if options.dba_n and state.get("dba"):
            arrays = {k: decode_array(v) for k, v in state["dba"].items() if k != "keys"}
            dba = DBAGraph.from_state(state["dba"]["keys"], arrays)
        extras = cls(options, dim, dba)
        if extras.pixels is not None and state.get("pixels", {}).get("keys"):
            extras.pixels.add(state["pixels"]["keys"], decode_array(state["pixels"]["thumbnails"]).astype(np.float32))
        return extras
