"""revsearch: reverse image search, from a pixel baseline to CNN embeddings in Milvus."""

from . import grpc_quiet  # noqa: F401  (first: before anything imports grpc)
from .errors import ImageLoadError, IndexMismatchError, IndexNotFoundError, RevsearchError, WeightsUnavailableError
from .exact_index import ExactIndex
from .hits import Hit
from .images import load_image
from .ivf_index import IVFIndex
from .milvus_index import MilvusIndex
from .pca import PCAReducer
from .pixel import PixelFeatures
from .search_index import IndexReport, SearchIndex

__all__ = [
    "Embedder", "EmbedderConfig", "ExactIndex", "Hit", "IVFIndex", "ImageLoadError", "IndexMismatchError",
    "IndexNotFoundError", "IndexReport", "MilvusIndex", "PCAReducer", "PixelFeatures", "RevsearchError",
    "SearchIndex", "WeightsUnavailableError", "load_image",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import the CNN embedder (and torch) only when it is used: pixel indexes and tools start fast."""
    if name in ("Embedder", "EmbedderConfig"):
        from . import embedder

        return getattr(embedder, name)
    raise AttributeError(f"module 'revsearch' has no attribute {name!r}")
