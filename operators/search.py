"""Search by image: a selected sample, an uploaded file, a local path or a URL."""

from __future__ import annotations

import base64
import os

import fiftyone.operators as foo
import fiftyone.operators.types as types

from revsearch.errors import ImageLoadError, PrivateURLError
from revsearch.fiftyone import tools
from revsearch.fiftyone.region_query import region_view

from .common import (
    IMAGE_SUFFIXES,
    brain_key_input,
    copy_mode_error,
    count_input,
    radio_input,
    reopen_on_error,
    stale_index_input,
    target_input,
    target_samples,
    update_if_asked,
)

SOURCES = {
    "selected": "Selected sample(s)",
    "upload": "Upload an image",
    "path": "Local file path",
    "url": "http(s) URL",
}
MODES = {"similar": "Similar images", "copy": "Edited copies (CNN + pixel fusion)"}
#: Offered when the index holds regions.
REGIONS_MODE = {"regions": "Images that contain it (regions)"}


def _uploaded_bytes(upload: dict) -> bytes:
    """Bytes of a FileView upload (base64, possibly as a data: URL)."""
    content = upload["content"]
    return base64.b64decode(content.split(",", 1)[1] if content.startswith("data:") else content)


def _query(ctx):
    """The query from the form: selected sample id(s), or image bytes / path / URL."""
    p = ctx.params
    source = p.get("source", "selected")
    if source == "selected":
        if not ctx.selected and not ctx.selected_labels:
            raise ValueError("select one or more samples in the grid first")
        return list(ctx.selected)
    if source == "upload":
        if not p.get("upload"):
            raise ValueError("choose an image file to upload first")
        return _uploaded_bytes(p["upload"])
    if not (p.get(source) or "").strip():
        raise ValueError(f"fill in the image {source} first")
    return p[source].strip()


def _in_form_terms(exc: ImageLoadError) -> ValueError:
    """A query image error, reworded for the App's form (no Python argument names)."""
    if isinstance(exc, PrivateURLError):
        return ValueError(
            f"{exc.source}: points at a private-network address; tick 'Allow private-network URLs' to search with it"
        )
    return ValueError(str(exc))


def _has_regions(ctx, key: str) -> bool:
    return bool(getattr(ctx.dataset.get_brain_info(key).config, "regions", False))


def _mode_input(ctx, inputs: types.Object, key: str) -> None:
    """Similar images, edited copies, or (index with regions) images that contain the query; flagged
    when the chosen index keeps no thumbnails for copies."""
    regions = _has_regions(ctx, key)
    prop = radio_input(
        inputs,
        "mode",
        {**MODES, **REGIONS_MODE} if regions else MODES,
        "similar",
        "Mode",
        "edited copies: resized, blurred, re-encoded, cropped or upside-down versions of the query image"
        + ("; contain it: the query (or a box of it) anywhere in an image, the match boxed" if regions else ""),
    )
    error = copy_mode_error(ctx, ctx.params.get("brain_key")) if ctx.params.get("mode") == "copy" else None
    if error:
        prop.invalid, prop.error_message = True, error
    if regions and ctx.params.get("mode") == "regions":
        _box_input(ctx, inputs)


def _box_input(ctx, inputs: types.Object) -> None:
    """The box of the query image to search with (a selected object's box by default)."""
    selected = _selected_box(ctx)
    prop = inputs.str(
        "box",
        default=", ".join(f"{v:.3f}" for v in selected[1]) if selected else None,
        label="Box (x, y, width, height)",
        description="relative to the query image (0-1); empty: the whole image",
    )
    try:
        _parse_box(ctx.params.get("box"))
    except ValueError as exc:
        prop.invalid, prop.error_message = True, str(exc)


def _parse_box(text: str | None) -> list[float] | None:
    if not (text or "").strip():
        return None
    try:
        box = [float(v) for v in text.replace(";", ",").split(",")]
    except ValueError:
        raise ValueError("Give four numbers: x, y, width, height (e.g. 0.4, 0.3, 0.25, 0.25)") from None
    if len(box) != 4:
        raise ValueError("Give four numbers: x, y, width, height (e.g. 0.4, 0.3, 0.25, 0.25)")
    return box


def _selected_box(ctx) -> tuple[str, list[float]] | None:
    """(sample id, box) of the object selected in the sample view, if one is."""
    for label in ctx.selected_labels or []:
        value = ctx.dataset[label["sample_id"]][label["field"]]
        for obj in getattr(value, "detections", None) or [value]:
            if getattr(obj, "id", None) == label["label_id"] and getattr(obj, "bounding_box", None):
                return label["sample_id"], list(obj.bounding_box)
    return None


def _region_view(ctx, results):
    """The samples that contain the query: a box of the selected sample (or object), or of an image."""
    p = ctx.params
    box = _parse_box(p.get("box"))
    query = _query(ctx)
    if isinstance(query, list):
        selected = _selected_box(ctx)
        if selected and not ctx.selected:
            query = [selected[0]]
        if len(query) != 1:
            raise ValueError(f"search inside images takes one query image, got {len(query)}: select a single sample")
        query = query[0]
    return region_view(
        results, target_samples(ctx), query, int(p.get("k", 25)), box, p.get("dist_field", "revsearch_dist")
    )


def _source_error(source: str, value) -> str | None:
    """What is wrong with the query filled in so far (None when nothing is, or nothing is filled in)."""
    if source == "upload" and value and not str(value.get("type") or "image/").startswith("image/"):
        return f"'{value.get('name')}' is not an image ({value.get('type')}): choose a JPEG, PNG, ... file"
    if source == "path" and (value or "").strip() and not os.path.isfile(value.strip()):
        return f"No file at {value.strip()} on the server"
    if source == "url" and (value or "").strip() and not value.strip().lower().startswith(("http://", "https://")):
        return "Give an http:// or https:// address"
    return None


def _source_input(ctx, inputs: types.Object, source: str) -> None:
    """The query image box for ``source``, flagged in the form when :func:`_source_error` finds a mistake."""
    if source == "upload":
        view = types.FileView(label="Image", types=",".join(IMAGE_SUFFIXES))
        prop = inputs.uploaded_file("upload", required=True, label="Image", view=view)
    elif source == "path":
        prop = inputs.str("path", required=True, label="Image path on the server")
    elif source == "url":
        prop = inputs.str("url", required=True, label="Image URL (http or https)")
        inputs.bool("allow_private_urls", default=False, label="Allow private-network URLs")
    else:
        return
    error = _source_error(source, ctx.params.get(source))
    if error:
        prop.invalid, prop.error_message = True, error


class SearchByImage(foo.Operator):
    """Sort the view by similarity to an image; the distance is stored in a field."""

    @property
    def config(self):
        return foo.OperatorConfig(name="search_by_image", label="revsearch: search by image", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = brain_key_input(ctx, inputs)
        if not key:
            return types.Property(inputs)
        stale_index_input(ctx, inputs, key)
        default = "selected" if ctx.selected else "upload"
        radio_input(inputs, "source", SOURCES, default, "Query")
        source = ctx.params.get("source", default)
        _source_input(ctx, inputs, source)
        _mode_input(ctx, inputs, key)
        count_input(ctx, inputs, "k", 1, default=25, label="Number of results")
        target_input(inputs)
        k, searched = ctx.params.get("k", 25), len(target_samples(ctx))
        if isinstance(k, (int, float)) and k > searched:
            inputs.view("all", types.Notice(label=f"Only {searched} samples are searched: all of them are shown"))
        inputs.str(
            "dist_field",
            default="revsearch_dist",
            label="Distance field",
            description="each result's distance to the query is stored here: squared L2 on CNN features; "
            "on pixel indexes the mean squared difference per pixel value, scaled to [0, 1] (0 = identical "
            "thumbnails, 1 = black against white); edited copies: the relative distance, 0 = identical, "
            "below 1 = nearer than the 5th hit",
        )
        return types.Property(inputs, view=types.View(label="Search by image"))

    @reopen_on_error
    def execute(self, ctx):
        p = ctx.params
        results = ctx.dataset.load_brain_results(p["brain_key"])
        update_if_asked(ctx, results)
        try:
            if p.get("mode") == "regions":
                view = _region_view(ctx, results)
                ctx.ops.set_view(view)
                return {"ids": view.values("id"), "distances": view.values(p.get("dist_field", "revsearch_dist"))}
            view = tools.query_view(
                results,
                target_samples(ctx),
                _query(ctx),
                int(p.get("k", 25)),
                p.get("dist_field", "revsearch_dist"),
                bool(p.get("allow_private_urls", False)),
                p.get("mode", "similar"),
            )
        except ImageLoadError as exc:
            raise _in_form_terms(exc) from None
        tools.per_pixel_distances(results, view, p.get("dist_field", "revsearch_dist"))
        ctx.ops.set_view(view)
        return {"ids": view.values("id"), "distances": view.values(p.get("dist_field", "revsearch_dist"))}
