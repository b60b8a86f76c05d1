"""Where brain runs saved by revsearch 0.1 find their classes: FiftyOne stores each run's config and
results class by its full name (``revsearch.brain_backend.…``) and imports that name on load. The
backend itself is :mod:`revsearch.fiftyone.brain`."""

from revsearch.fiftyone.brain import RevsearchSimilarityConfig, RevsearchSimilarityIndex

__all__ = ["RevsearchSimilarityConfig", "RevsearchSimilarityIndex"]
