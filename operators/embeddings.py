"""Operators that compute embeddings, fit PCA and fit K-means clusters."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from revsearch.fiftyone import tools

from .common import (
    DEFAULT_EMBEDDINGS_FIELD,
    count_input,
    embeddings_field_input,
    extractor_from_params,
    extractor_inputs,
    long_running_config,
    prompt_output,
    with_progress,
    worker_notice,
)


def _embeddings_field(ctx) -> str:
    """The chosen embeddings field; a one-line error when the dataset has none."""
    field = ctx.params.get("embeddings_field")
    if not field:
        raise ValueError("this dataset has no embeddings field yet: run 'revsearch: compute embeddings' first")
    return field


def _on_view(ctx) -> str:
    """Tells the user which samples the operator works on."""
    n = len(ctx.view) if ctx.view is not None else 0
    return f"Runs on the {n} samples of the current view (clear the view bar to use the whole dataset)."


class ComputeEmbeddings(foo.Operator):
    """Embed the images of the current view into a vector field."""

    @property
    def config(self):
        return long_running_config(
            "compute_embeddings",
            "compute embeddings",
            "Embed the current view's images with a CNN (or pixel thumbnails)",
            streams=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("embeddings_field", default=DEFAULT_EMBEDDINGS_FIELD, required=True, label="Embeddings field")
        extractor_inputs(ctx, inputs)
        worker_notice(inputs)
        return types.Property(inputs, view=types.View(label="Compute embeddings", description=_on_view(ctx)))

    def execute(self, ctx):
        return with_progress(ctx, lambda progress: self._embed(ctx, progress), _embed_outputs(), reload=True)

    def _embed(self, ctx, progress) -> dict:
        field = ctx.params.get("embeddings_field", DEFAULT_EMBEDDINGS_FIELD)
        failures = tools.compute_embeddings(ctx.view, field, extractor_from_params(ctx.params), progress)
        return {"embeddings_field": field, "embedded": len(ctx.view) - len(failures), "failures": failures}

    def resolve_output(self, ctx):
        return prompt_output(ctx, _embed_outputs())


def _embed_outputs() -> types.Property:
    outputs = types.Object()
    outputs.int("embedded", label="Images embedded")
    outputs.obj("failures", label="Images skipped (sample id: reason)", view=types.JSONView())
    return types.Property(outputs)


class FitPCA(foo.Operator):
    """PCA on an embeddings field; the reduced vectors go in a new field."""

    @property
    def config(self):
        return long_running_config("fit_pca", "fit PCA", "Reduce an embeddings field with PCA (then L2-normalise)")

    def resolve_input(self, ctx):
        inputs = types.Object()
        field = embeddings_field_input(ctx, inputs)
        if not field:
            return types.Property(inputs)
        count_input(ctx, inputs, "n_components", 1, default=128, required=True, label="Components")
        inputs.bool("whiten", default=False, label="Whiten")
        inputs.str("out_field", default=f"{field}_pca", required=True, label="Output field")
        return types.Property(inputs, view=types.View(label="Fit PCA", description=_on_view(ctx)))

    def execute(self, ctx):
        p = ctx.params
        ratios = tools.fit_pca(
            ctx.view, _embeddings_field(ctx), p["out_field"], int(p["n_components"]), bool(p.get("whiten", False))
        )
        ctx.ops.reload_dataset()
        return {
            "out_field": p["out_field"],
            "explained_variance": round(sum(ratios), 4),
            "explained_variance_ratios": ratios,
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("explained_variance", label="Fraction of variance kept")
        return types.Property(outputs)


class FitKMeans(foo.Operator):
    """K-means on an embeddings field: cluster id and distance to centre as sample fields."""

    @property
    def config(self):
        return long_running_config(
            "fit_kmeans", "fit K-means", "Cluster an embeddings field; filter and group by cluster in the App"
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not embeddings_field_input(ctx, inputs):
            return types.Property(inputs)
        count_input(ctx, inputs, "n_clusters", 1, default=16, required=True, label="Clusters")
        inputs.str("cluster_field", default="revsearch_cluster", required=True, label="Cluster id field")
        inputs.str(
            "distance_field",
            default="revsearch_cluster_dist",
            required=True,
            label="Distance-to-centre field",
            description="L2 distance of each sample to its centre",
        )
        return types.Property(inputs, view=types.View(label="Fit K-means", description=_on_view(ctx)))

    def execute(self, ctx):
        p = ctx.params
        sizes = tools.fit_kmeans(
            ctx.view, _embeddings_field(ctx), int(p["n_clusters"]), p["cluster_field"], p["distance_field"]
        )
        ctx.ops.reload_dataset()
        return {"cluster_sizes": [{"cluster": i, "samples": n} for i, n in enumerate(sizes)], "n_clusters": len(sizes)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        table = types.TableView()
        table.add_column("cluster", label="Cluster id")
        table.add_column("samples", label="Samples")
        outputs.list("cluster_sizes", types.Object(), label="Cluster sizes", view=table)
        return types.Property(outputs)
