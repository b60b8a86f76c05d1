"""The pipeline every feature extractor shares: threaded decoding, batching, per-file failures."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from revsearch.errors import ImageLoadError
from revsearch.features.decode import as_rgb_array, load_image


@dataclass
class EmbedBatch:
    """Vectors for the inputs (by position) that decoded, and a reason for each that did not."""

    indices: list[int]
    vectors: np.ndarray
    failures: dict[int, str]


class FeatureExtractor:
    """Base class: subclasses define ``prepare`` (one decoded image) and ``forward`` (a batch)."""

    dim: int
    dtype: np.dtype = np.dtype(np.float32)
    batch_size: int = 32
    #: Short side the decoder must keep (JPEGs are decoded at reduced size above it).
    min_side: int | None = None
    label: str = "features"

    def prepare(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        """What determines the vectors; stored with an index, compared with the query side."""
        raise NotImplementedError

    def no_vectors(self) -> np.ndarray:
        """The vectors of no image, shaped as :meth:`forward`'s (so that batches concatenate)."""
        return np.empty((0, self.dim), self.dtype)

    def _load_prepared(self, path: str | os.PathLike) -> np.ndarray:
        return self.prepare(load_image(path, min_side=self.min_side))

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors for in-memory images (grayscale / RGB / RGBA arrays)."""
        prepared = [self.prepare(as_rgb_array(im)) for im in images]
        out = [
            self.forward(np.stack(prepared[i : i + self.batch_size])) for i in range(0, len(prepared), self.batch_size)
        ]
        return np.concatenate(out) if out else self.no_vectors()

    def iter_batches(
        self, paths: Sequence[str | os.PathLike], progress: bool = True, workers: int = 2
    ) -> Iterator[EmbedBatch]:
        """Embed files batch by batch; the next batch decodes in threads while this one runs."""
        bs = self.batch_size
        bar = tqdm(total=len(paths), desc=self.label, unit="img", disable=not progress)
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def submit(start: int) -> list[Future]:
                return [pool.submit(self._load_prepared, p) for p in paths[start : start + bs]]

            pending = submit(0) if len(paths) else []
            for start in range(0, len(paths), bs):
                current = pending
                pending = submit(start + bs) if start + bs < len(paths) else []
                batch = self._collect(start, current)
                bar.update(len(current))
                yield batch
        bar.close()

    def _collect(self, start: int, futures: list[Future]) -> EmbedBatch:
        images, indices, failures = [], [], {}
        for offset, future in enumerate(futures):
            try:
                images.append(future.result())
                indices.append(start + offset)
            except ImageLoadError as exc:
                failures[start + offset] = exc.reason
            except Exception as exc:  # a decoder bug must not abort the run either
                failures[start + offset] = f"unexpected decoding error: {exc!r}"
        vectors = self.forward(np.stack(images)) if images else self.no_vectors()
        return EmbedBatch(indices, vectors, failures)

    def embed_paths(self, paths: Sequence[str | os.PathLike], progress: bool = True) -> EmbedBatch:
        """Embed all files; returns vectors for the good ones and a reason for each bad one."""
        indices, vectors, failures = [], [], {}
        for batch in self.iter_batches(paths, progress):
            indices.extend(batch.indices)
            vectors.append(batch.vectors)
            failures.update(batch.failures)
        stacked = np.concatenate(vectors) if vectors else self.no_vectors()
        return EmbedBatch(indices, stacked, failures)
