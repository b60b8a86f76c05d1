"""The plugin's operators, thin wrappers over ``revsearch.fiftyone.tools``."""

from .duplicates import FindNearDuplicates
from .embeddings import ComputeEmbeddings, FitKMeans, FitPCA
from .indexes import BuildIndex, DeleteIndex, InspectIndex, ListIndexes, UpdateIndex
from .search import SearchByImage

OPERATORS = [
    ComputeEmbeddings,
    FitPCA,
    FitKMeans,
    BuildIndex,
    SearchByImage,
    FindNearDuplicates,
    ListIndexes,
    InspectIndex,
    UpdateIndex,
    DeleteIndex,
]
