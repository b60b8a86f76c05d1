"""revsearch: reverse image search, from a pixel baseline to CNN embeddings in Milvus.

The public names are imported on first use, so ``import revsearch`` stays cheap (not even numpy:
the command line starts a Lite file's serving process before it): a query or a plugin load pays
only for the modules it needs (pymilvus for Milvus, torch only to build models).
"""

from importlib import import_module

from . import grpc_quiet  # noqa: F401  (first: before anything imports grpc)
from .errors import ImageLoadError, IndexMismatchError, IndexNotFoundError, RevsearchError, WeightsUnavailableError

#: Public name -> the module that defines it (imported by ``__getattr__`` on first use).
_LAZY = {
    "Embedder": "embedder",
    "EmbedderConfig": "embedder",
    "ExactIndex": "exact_index",
    "Hit": "hits",
    "IVFIndex": "ivf_index",
    "IndexReport": "search_index",
    "MilvusIndex": "milvus_index",
    "PCAReducer": "pca",
    "PixelFeatures": "pixel",
    "SearchIndex": "search_index",
    "load_image": "images",
}

__all__ = [
    "Embedder",
    "EmbedderConfig",
    "ExactIndex",
    "Hit",
    "IVFIndex",
    "ImageLoadError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReport",
    "MilvusIndex",
    "PCAReducer",
    "PixelFeatures",
    "RevsearchError",
    "SearchIndex",
    "WeightsUnavailableError",
    "load_image",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'revsearch' has no attribute {name!r}")
