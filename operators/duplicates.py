"""Near-duplicates and exact copies: distances to the nearest other sample (with their histogram to
choose a threshold), one group id per duplicate group, and a tag on all but one sample per group."""

from __future__ import annotations

from dataclasses import dataclass

import fiftyone.operators as foo
import fiftyone.operators.types as types

from revsearch.fiftyone import duplicates

from .common import (
    brain_key_input,
    copy_mode_error,
    long_running_config,
    radio_input,
    stale_index_input,
    update_if_asked,
    worker_notice,
)

MODES = {
    "near": "Near-duplicates (distance in the index)",
    "copy": "Edited copies (CNN + pixel fusion)",
    "exact": "Exact copies (same file bytes)",
}
DIST_FIELD, ID_FIELD = "revsearch_nn_dist", "revsearch_nn_id"
#: Nearest other sample by the copy mode's fused (relative) distance.
COPY_DIST_FIELD, COPY_ID_FIELD = "revsearch_copy_dist", "revsearch_copy_id"
GROUP_FIELDS = {"near": "revsearch_dup_group", "copy": "revsearch_copy_group", "exact": "revsearch_file_dup_group"}


@dataclass(frozen=True)
class ThresholdForm:
    """The threshold box of an index-based mode, and where its nearest-neighbour distances go."""

    name: str
    default: float
    label: str
    description: str
    dist_field: str
    axis: str


THRESHOLDS = {
    "near": ThresholdForm(
        "threshold",
        0.05,
        "Threshold (squared L2)",
        "CNN vectors are unit length: 0 = identical, 2 = unrelated; about 0.05 catches re-encodes and resizes. "
        "Pixel vectors use 0-255 values over 3072 dimensions, so use e.g. 3072 * 10^2 there.",
        DIST_FIELD,
        "squared L2 distance to the nearest other sample",
    ),
    "copy": ThresholdForm(
        "copy_threshold",
        duplicates.COPY_THRESHOLD,
        "Threshold (relative distance)",
        "distance to the nearest other sample relative to the 5th nearest, CNN and thumbnails fused: 0 = identical, "
        "resized / blurred / cropped copies score below about 0.1, different photos above 0.2",
        COPY_DIST_FIELD,
        "relative distance to the nearest other sample (CNN + pixel fusion)",
    ),
}


def _histogram_plot(counts: list[int], edges: list[float], threshold: float, axis: str) -> dict:
    """A Plotly bar chart of the distance histogram with the threshold drawn as a red line."""
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    line = dict(type="line", x0=threshold, x1=threshold, y0=0, y1=1, yref="paper", line={"color": "red", "width": 2})
    return {
        "data": [{"type": "bar", "x": centers, "y": counts, "name": "samples", "marker": {"color": "#ff6d04"}}],
        "layout": {
            "height": 260,
            "margin": {"l": 50, "r": 10, "t": 10, "b": 40},
            "bargap": 0.05,
            "xaxis": {"title": {"text": axis}},
            "yaxis": {"title": {"text": "samples"}, "type": "log"},
            "shapes": [line],
        },
    }


class FindNearDuplicates(foo.Operator):
    """Group near-duplicates (or exact copies) and tag all but one sample of each group."""

    @property
    def config(self):
        return long_running_config(
            "find_near_duplicates", "find near-duplicates", "Group near-duplicates or copies; tag all but one per group"
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        radio_input(inputs, "mode", MODES, "near", "Find")
        mode = ctx.params.get("mode", "near")
        if mode in THRESHOLDS:
            key = brain_key_input(ctx, inputs)
            if not key:
                return types.Property(inputs)
            stale_index_input(ctx, inputs, key)
            self._threshold_inputs(ctx, inputs, mode)
        inputs.str(
            "drop_tag",
            default="duplicate",
            label="Tag all but one per group with",
            description="keep one sample per group: the others get this tag (filter them out with the sidebar's tags)",
        )
        worker_notice(inputs)
        return types.Property(inputs, view=types.View(label="Find near-duplicates"))

    @staticmethod
    def _threshold_inputs(ctx, inputs: types.Object, mode: str) -> None:
        form = THRESHOLDS[mode]
        prop = inputs.float(form.name, default=form.default, min=0.0, label=form.label, description=form.description)
        key, field = ctx.params.get("brain_key"), form.dist_field
        threshold = float(ctx.params.get(form.name) or form.default)
        error = copy_mode_error(ctx, key) if mode == "copy" else None
        if error:
            prop.invalid, prop.error_message = True, error
        elif key and duplicates.distances_from(ctx.dataset, field, key):
            counts, edges = duplicates.distance_histogram(ctx.dataset.exists(field), field)
            inputs.view(
                "histogram_note",
                types.Notice(label="Distances to the nearest other sample (last run); the red line is the threshold"),
            )
            inputs.plot("histogram", **_histogram_plot(counts, edges, threshold, form.axis))
        else:
            inputs.view(
                "histogram_note",
                types.Notice(
                    label="Each run stores every sample's distance to its nearest other sample "
                    f"('{field}'); reopen this form to see their histogram and pick a threshold"
                ),
            )

    def execute(self, ctx):
        p = ctx.params
        mode, drop_tag = p.get("mode", "near"), p.get("drop_tag") or "duplicate"
        if mode == "exact":
            groups = duplicates.exact_duplicate_groups(ctx.view, GROUP_FIELDS["exact"], drop_tag)
        elif mode == "copy":
            results = ctx.dataset.load_brain_results(p["brain_key"])
            update_if_asked(ctx, results)
            threshold = float(p.get("copy_threshold", duplicates.COPY_THRESHOLD))
            groups = duplicates.copy_duplicate_groups(
                results, ctx.view, threshold, GROUP_FIELDS["copy"], drop_tag, COPY_DIST_FIELD, COPY_ID_FIELD
            )
        else:
            results = ctx.dataset.load_brain_results(p["brain_key"])
            update_if_asked(ctx, results)
            duplicates.nearest_neighbour_distances(results, ctx.view, DIST_FIELD, ID_FIELD)
            groups = duplicates.near_duplicate_groups(
                results, ctx.view, float(p.get("threshold", 0.05)), GROUP_FIELDS["near"], drop_tag
            )
        view = duplicates.grouped_view(ctx.view, GROUP_FIELDS[mode])
        ctx.ops.set_view(view)
        return {
            "duplicates": len(view),
            "groups": groups,
            "tagged": len(view) - groups,
            "ids": view.values("id"),
            "group_field": GROUP_FIELDS[mode],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("duplicates", label="Samples with a near-duplicate")
        outputs.int("groups", label="Duplicate groups")
        outputs.int("tagged", label="Samples tagged (all but one per group)")
        outputs.str("group_field", label="Group id field")
        return types.Property(outputs)
