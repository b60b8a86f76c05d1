"""Form pieces and parameter parsing shared by the operators."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators.types as types

from revsearch import Embedder, PixelFeatures
from revsearch.backbones import DEFAULT_BACKBONE, FEATURE_DIMS
from revsearch.brain_backend import BACKEND_NAME
from revsearch.extractor import FeatureExtractor

DEFAULT_EMBEDDINGS_FIELD = "revsearch_embedding"


def progress_callback(ctx):
    """A ``progress(fraction, label)`` callback reporting through ``ctx.set_progress``."""
    return lambda fraction, label: ctx.set_progress(progress=fraction, label=label)


def revsearch_keys(ctx) -> list[str]:
    """Brain keys of the dataset's revsearch indexes."""
    return ctx.dataset.list_brain_runs(method=BACKEND_NAME) if ctx.dataset is not None else []


def vector_fields(ctx) -> list[str]:
    """Sample fields holding vectors (embeddings)."""
    if ctx.dataset is None:
        return []
    return sorted(ctx.dataset.get_field_schema(ftype=fo.VectorField).keys())


def choose(inputs: types.Object, name: str, choices: list[str], label: str, description: str = "",
           required: bool = True, default: str | None = None) -> None:
    """A dropdown over ``choices`` (free text allowed when there are none yet)."""
    if not choices:
        inputs.str(name, label=label, description=description, required=required, default=default)
        return
    dropdown = types.DropdownView()
    for choice in choices:
        dropdown.add_choice(choice, label=choice)
    inputs.enum(name, dropdown.values(), label=label, description=description, required=required,
                default=default if default in choices else choices[0] if required else None, view=dropdown)


def brain_key_input(ctx, inputs: types.Object) -> bool:
    """The index (brain key) selector; False (with a notice) when the dataset has no index."""
    keys = revsearch_keys(ctx)
    if not keys:
        inputs.view("none", types.Warning(label="No revsearch index yet",
                                          description="Build one first with 'revsearch: build index'."))
        return False
    choose(inputs, "brain_key", keys, "Index (brain key)")
    return True


def extractor_inputs(inputs: types.Object, pixel: bool = True) -> None:
    """Form fields describing the feature extractor."""
    kinds = ["cnn", "pixel"] if pixel else ["cnn"]
    inputs.enum("features", kinds, default="cnn", label="Features",
                description="cnn: a torchvision CNN trunk; pixel: 32x32 thumbnails (the baseline)",
                view=types.RadioGroup())
    inputs.enum("backbone", sorted(FEATURE_DIMS), default=DEFAULT_BACKBONE, label="Backbone")
    inputs.str("weights", default="DEFAULT", label="Weights",
               description="DEFAULT, a torchvision weights name (e.g. IMAGENET1K_V1) or a local .pth file")
    inputs.enum("pooling", ["gem", "avg"], default="gem", label="Pooling",
                description="GeM (generalised mean, p=3) or average pooling of the last feature map")
    inputs.int("batch_size", default=32, min=1, label="Batch size")


def extractor_from_params(params: dict) -> FeatureExtractor:
    """The extractor described by :func:`extractor_inputs` values."""
    if params.get("features", "cnn") == "pixel":
        return PixelFeatures()
    weights = params.get("weights", "DEFAULT") or None
    return Embedder(backbone=params.get("backbone", DEFAULT_BACKBONE), weights=weights,
                    pooling=params.get("pooling", "gem"), batch_size=int(params.get("batch_size", 32)))

