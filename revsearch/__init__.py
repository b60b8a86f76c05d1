"""revsearch: reverse image search, from a pixel baseline to CNN embeddings in Milvus.

Subpackages, lowest first (imports point down only): ``features`` (images to vectors), ``index``
(vector indexes by kind), ``retrieval`` (options applied at query time), ``folder`` (the saved,
updatable index of a folder of images), ``fiftyone`` (the Brain backend and what the App calls) and
``cli``. The public names below are imported on first use, so ``import revsearch`` stays cheap.
"""

import os
from importlib import import_module

from revsearch.errors import (
    ImageLoadError,
    IndexMismatchError,
    IndexNotFoundError,
    RevsearchError,
    WeightsUnavailableError,
)

# Keep gRPC's C-core log lines (e.g. GOAWAY notices) off the user's terminal; gRPC reads these once,
# when it is first imported. A value the user has set is kept.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_TRACE", "")

#: Public name -> the module that defines it (imported by ``__getattr__`` on first use).
_LAZY = {
    **dict.fromkeys(("Embedder", "EmbedderConfig"), "features.cnn"),
    **dict.fromkeys(("IndexReport", "SearchIndex"), "folder.index"),
    "ExactIndex": "index.exact",
    "Hit": "index.hits",
    "IVFIndex": "index.ivf",
    "MilvusIndex": "index.milvus",
    "PCAReducer": "features.pca",
    "PixelFeatures": "features.pixel",
    "load_image": "features.decode",
}
_ERRORS = (ImageLoadError, IndexMismatchError, IndexNotFoundError, RevsearchError, WeightsUnavailableError)
__all__ = sorted([*_LAZY, *(error.__name__ for error in _ERRORS)])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f"revsearch.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'revsearch' has no attribute {name!r}")
