"""Form pieces and parameter parsing shared by the operators."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from revsearch.features.backbones import DEFAULT_BACKBONE, FEATURE_DIMS
from revsearch.features.factory import FEATURES, make_extractor
from revsearch.features.pipeline import FeatureExtractor
from revsearch.fiftyone.brain import BACKEND_NAME

DEFAULT_EMBEDDINGS_FIELD = "revsearch_embedding"
#: Targets of a search: the whole dataset (default) or only the view shown in the App.
TARGETS = {"dataset": "Whole dataset", "view": "Current view only"}
#: File-name endings the upload box accepts. FiftyOne's FileView keeps a file only when its *name ends
#: with* one of these (it does not understand MIME patterns such as ``image/*``), case-sensitively.
IMAGE_SUFFIXES = [
    s for ext in ("jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp") for s in (f".{ext}", f".{ext.upper()}")
]


def long_running_config(name: str, label: str, description: str) -> foo.OperatorConfig:
    """The config of an operator that may run for minutes: in the App, or delegated to a worker."""
    return foo.OperatorConfig(
        name=name,
        label=f"revsearch: {label}",
        description=description,
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


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


def dropdown_input(
    inputs: types.Object,
    name: str,
    choices: list[str],
    label: str,
    description: str = "",
    required: bool = True,
    default: str | None = None,
) -> None:
    """A dropdown over ``choices`` (free text allowed when there are none yet)."""
    if not choices:
        inputs.str(name, label=label, description=description, required=required, default=default)
        return
    dropdown = types.DropdownView()
    for choice in choices:
        dropdown.add_choice(choice, label=choice)
    inputs.enum(
        name,
        dropdown.values(),
        label=label,
        description=description,
        required=required,
        default=default if default in choices else choices[0] if required else None,
        view=dropdown,
    )


def new_brain_key_input(ctx, inputs: types.Object, default: str = "revsearch") -> None:
    """A brain key for a new index, flagged in the form when invalid or already used."""
    existing = set(ctx.dataset.list_brain_runs()) if ctx.dataset is not None else set()
    free = next(k for k in [default] + [f"{default}_{i}" for i in range(2, 1000)] if k not in existing)
    prop = inputs.str(
        "brain_key",
        default=free,
        required=True,
        label="Brain key",
        description="a name for the index (letters, digits and underscores)",
    )
    key = ctx.params.get("brain_key", free) or ""
    if key in existing:
        prop.invalid = True
        prop.error_message = f"An index or brain run named '{key}' already exists: choose another name"
    elif key and not key.isidentifier():
        prop.invalid = True
        prop.error_message = "Use letters, digits and underscores only, not starting with a digit"


def radio_input(
    inputs: types.Object, name: str, choices: dict[str, str], default: str, label: str, description: str = ""
) -> types.Property:
    """A radio group of ``choices`` ({value: label shown})."""
    radio = types.RadioGroup()
    for value, shown in choices.items():
        radio.add_choice(value, label=shown)
    return inputs.enum(name, radio.values(), default=default, label=label, view=radio, description=description)


def target_input(inputs: types.Object) -> None:
    """Whether to search the whole dataset or only the current view."""
    description = "the whole dataset, or only the samples in the view shown now (e.g. the previous result)"
    radio_input(inputs, "target", TARGETS, "dataset", "Search in", description)


def target_samples(ctx):
    """The samples to search: the whole dataset unless the form asked for the current view."""
    return ctx.view if ctx.params.get("target", "dataset") == "view" else ctx.dataset


def embeddings_field_input(ctx, inputs: types.Object, name: str = "embeddings_field") -> bool:
    """An existing embeddings field; False (with a notice) when the dataset has none yet."""
    fields = vector_fields(ctx)
    if not fields:
        inputs.view(
            "no_embeddings",
            types.Warning(
                label="No embeddings field yet",
                description="Run 'revsearch: compute embeddings' first (or build an index with "
                "'Keep embeddings in field' filled in).",
            ),
        )
        return False
    dropdown_input(inputs, name, fields, "Embeddings field", default=DEFAULT_EMBEDDINGS_FIELD)
    return True


def brain_key_input(ctx, inputs: types.Object) -> bool:
    """The index (brain key) selector; False (with a notice) when the dataset has no index."""
    keys = revsearch_keys(ctx)
    if not keys:
        inputs.view(
            "none",
            types.Warning(label="No revsearch index yet", description="Build one first with 'revsearch: build index'."),
        )
        return False
    dropdown_input(inputs, "brain_key", keys, "Index (brain key)")
    return True


def copy_mode_error(ctx, brain_key: str | None) -> str | None:
    """Why index ``brain_key`` cannot search edited copies (it keeps no thumbnails), or None."""
    if (
        not brain_key
        or brain_key not in revsearch_keys(ctx)
        or ctx.dataset.get_brain_info(brain_key).config.copy_pixels
    ):
        return None
    return f"Index '{brain_key}' keeps no thumbnails: rebuild it with 'Copy-mode thumbnails' above 0"


def extractor_inputs(ctx, inputs: types.Object) -> None:
    """Form fields describing the feature extractor (the CNN's settings only when features is cnn)."""
    inputs.enum(
        "features",
        list(FEATURES),
        default="cnn",
        label="Features",
        view=types.RadioGroup(),
        description="cnn: a torchvision CNN trunk; pixel: 32x32 thumbnails (the baseline)",
    )
    if ctx.params.get("features", "cnn") != "cnn":
        return
    inputs.enum("backbone", sorted(FEATURE_DIMS), default=DEFAULT_BACKBONE, label="Backbone")
    inputs.str(
        "weights",
        default="DEFAULT",
        label="Weights",
        description="DEFAULT (also when empty): the backbone's ImageNet weights; a torchvision "
        "weights name (e.g. IMAGENET1K_V1), a local .pth file, or 'random' "
        "(untrained, for tests only)",
    )
    inputs.enum(
        "pooling",
        ["gem", "avg"],
        default="gem",
        label="Pooling",
        description="GeM (generalised mean, p=3) or average pooling of the last feature map",
    )
    inputs.int("batch_size", default=32, min=1, label="Batch size")


def weights_from_form(value: str | None) -> str | None:
    """The Weights box: empty means DEFAULT (never random); 'random' asks for untrained weights (None)."""
    weights = (value or "").strip() or "DEFAULT"
    return None if weights.lower() == "random" else weights


def extractor_from_params(params: dict) -> FeatureExtractor:
    """The extractor described by :func:`extractor_inputs` values."""
    if params.get("features", "cnn") == "pixel":
        return make_extractor("pixel")
    return make_extractor(
        {
            "type": "cnn",
            "backbone": params.get("backbone", DEFAULT_BACKBONE),
            "weights": weights_from_form(params.get("weights")),
            "pooling": params.get("pooling", "gem"),
            "batch_size": int(params.get("batch_size", 32)),
        }
    )
