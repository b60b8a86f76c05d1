"""Exceptions raised by revsearch, each naming its cause."""


class RevsearchError(Exception):
    """Base class of every error revsearch raises on purpose."""


class ImageLoadError(RevsearchError):
    """An image could not be read; ``reason`` says why in a few words."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class PrivateURLError(ImageLoadError):
    """A URL (or a redirect) points at a loopback / private / link-local address, refused unless allowed."""


class QueryImageError(RevsearchError, ValueError):
    """A query image the search cannot use (e.g. a region query's crop smaller than the network's stride)."""


class WeightsUnavailableError(RevsearchError):
    """Pretrained weights could not be loaded (offline, missing file, bad file)."""


class IndexMismatchError(RevsearchError):
    """A query or update does not fit the index (dimension, model, PCA)."""


class IndexNotFoundError(RevsearchError):
    """An index directory or Milvus collection does not exist."""


class UnsupportedIndexError(RevsearchError):
    """The Milvus deployment does not offer the requested index type (e.g. HNSW on Milvus Lite)."""


class LiteFileBusyError(RevsearchError):
    """A Milvus Lite file is already open in another process."""


class BulkImportError(RevsearchError):
    """A Milvus bulk import failed or timed out; the message carries the server's reason."""


class BulkImportUnsupportedError(BulkImportError):
    """The Milvus deployment does not offer bulk import (e.g. Milvus Lite)."""


class IndexBusyError(RevsearchError):
    """Another process is updating the same index directory."""


class IndexCorruptError(RevsearchError):
    """An index file is damaged (e.g. a truncated or hand-edited manifest)."""


class DamagedFileError(IndexCorruptError):
    """One file of an index folder is damaged or missing; ``path`` names it (``--rebuild`` moves it aside)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path} is damaged ({reason}); rebuild the index with revsearch index FOLDER --rebuild")
        self.path, self.reason = path, reason


class DiskFullError(RevsearchError):
    """A write found no space left on the disk; nothing was committed."""
