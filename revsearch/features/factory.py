"""The one factory that makes a feature extractor from its description (``cnn`` or ``pixel``)."""

from __future__ import annotations

from revsearch.features.pipeline import FeatureExtractor

#: The kinds of features: a torchvision CNN's pooled descriptor, or pixel thumbnails (the baseline).
FEATURES = ("cnn", "pixel")
#: Settings of a CNN extractor that a description may carry (see ``Embedder.describe``).
CNN_SETTINGS = ("backbone", "weights", "pooling", "gem_p", "image_size", "batch_size", "runtime")
#: Why other extractors cannot index regions (:mod:`revsearch.features.regions`).
REGIONS_NEED_CNN = "regions are pooled from a single-scale CNN's feature map: choose cnn features"


def make_extractor(description: dict | str | None = None) -> FeatureExtractor:
    """The extractor ``description`` names: the ``describe()`` of one (stored with an index), or
    ``{"type": "cnn" | "pixel", ...settings}`` (a bare type string is enough; None: the default CNN).
    Settings not given take their defaults; torch is imported only for CNN features."""
    if description is None or isinstance(description, str):
        description = {"type": description or "cnn"}
    kind = description.get("type", "cnn")
    scales = tuple(description.get("scales") or (1.0,))
    if description.get("regions") and (kind != "cnn" or scales != (1.0,)):
        raise ValueError(REGIONS_NEED_CNN)
    if kind == "pixel":
        from revsearch.features.pixel import PixelFeatures

        return PixelFeatures(description.get("size", 32))
    if kind != "cnn":
        raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")
    from revsearch.features.cnn import Embedder

    config = cnn_config(description)
    if description.get("regions"):  # whole-image vector + region vectors from one pass
        from revsearch.features.regions import RegionEmbedder

        return RegionEmbedder(config, digest=description.get("weights_digest"), model_id=description.get("model_id"))
    if scales != (1.0,):  # multi-scale descriptors (pooled at several input sizes, averaged)
        from revsearch.features.multiscale import MultiScaleEmbedder

        return MultiScaleEmbedder(config, scales)
    # a stored description names the weights' hash: a query then opens the cached ONNX export directly
    return Embedder(config, digest=description.get("weights_digest"), model_id=description.get("model_id"))


def cnn_config(description: dict):
    """The CNN settings of an extractor ``describe()`` (those not given: their defaults)."""
    from revsearch.features.cnn import EmbedderConfig

    return EmbedderConfig(**{k: description[k] for k in CNN_SETTINGS if k in description})


def parse_scales(text: str) -> tuple[float, ...]:
    """``"1,0.707,0.5"`` -> (1.0, 0.707, 0.5); a clear error for anything else."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"scales must be comma-separated numbers such as 1,0.707,0.5, got {text!r}") from None
    if not scales:
        raise ValueError("give at least one scale, e.g. 1")
    return scales
