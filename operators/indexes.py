"""Operators that build, list, inspect, update and delete revsearch indexes (brain runs)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from revsearch.fiftyone import tools
from revsearch.index.registry import INDEX_KINDS
from revsearch.retrieval.options import RetrievalOptions

from .common import (
    DEFAULT_EMBEDDINGS_FIELD,
    brain_key_input,
    dropdown_input,
    extractor_from_params,
    extractor_inputs,
    long_running_config,
    new_brain_key_input,
    progress_callback,
    revsearch_keys,
    vector_fields,
)

_NO_FIELD = "(compute now)"
#: Thumbnail side kept for the search's "edited copies" mode (the library's brain backend defaults to none).
DEFAULT_COPY_PIXELS = RetrievalOptions().copy_pixels


def _index_options(params: dict) -> dict:
    """Backend options from the form; empty values mean 'use the default'."""
    kind = params.get("index_kind", "milvus")
    if kind == "milvus":
        opts = {"uri": params.get("uri") or None, "index_type": params.get("index_type", "FLAT")}
    elif kind == "kmeans":
        opts = {"n_clusters": params.get("n_clusters") or None, "nprobe": params.get("nprobe") or None}
    else:
        opts = {}
    if params.get("features", "cnn") != "pixel":
        if params.get("pca_components"):
            opts["pca_components"] = int(params["pca_components"])
        opts["copy_pixels"] = int(params.get("copy_pixels", DEFAULT_COPY_PIXELS) or 0)
    return {k: v for k, v in opts.items() if v is not None}


class BuildIndex(foo.Operator):
    """Index the current view under a brain key: Milvus, K-means IVF or exact, over CNN or pixel features."""

    @property
    def config(self):
        return long_running_config(
            "build_index", "build index", "Index the current view for search by image and the App's sort by similarity"
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        new_brain_key_input(ctx, inputs)
        inputs.enum(
            "index_kind",
            list(INDEX_KINDS),
            default="milvus",
            label="Index",
            view=types.RadioGroup(),
            description="exact: every vector compared (numpy); kmeans: K-means IVF; milvus: Milvus Lite file or server",
        )
        kind = ctx.params.get("index_kind", "milvus")
        if kind == "milvus":
            inputs.str(
                "uri",
                label="Milvus URI",
                description="empty: Milvus Lite file "
                "~/.fiftyone/revsearch/milvus.db; or a .db path, or http://host:19530",
            )
            inputs.enum("index_type", ["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"], default="FLAT", label="Index type")
        elif kind == "kmeans":
            inputs.int("n_clusters", label="Clusters", description="empty: about 4 x sqrt(N)")
            inputs.int("nprobe", label="Clusters probed per query", description="empty: 1/20 of the clusters")
        dropdown_input(
            inputs,
            "embeddings_field",
            [_NO_FIELD] + vector_fields(ctx),
            "Embeddings",
            required=False,
            description="an existing embeddings field, or compute embeddings now",
            default=_NO_FIELD,
        )
        if ctx.params.get("embeddings_field", _NO_FIELD) == _NO_FIELD:
            extractor_inputs(ctx, inputs)
            inputs.str(
                "keep_field",
                default=DEFAULT_EMBEDDINGS_FIELD,
                label="Keep embeddings in field",
                description="the computed vectors are also stored in this sample field (for "
                "'fit PCA' and 'fit K-means'); empty: do not keep them",
            )
        if ctx.params.get("features", "cnn") != "pixel":
            inputs.int("pca_components", label="PCA components", description="empty: no PCA")
            inputs.int(
                "copy_pixels",
                default=DEFAULT_COPY_PIXELS,
                min=0,
                label="Copy-mode thumbnails",
                description="side (pixels) of the thumbnails kept for searching edited copies; 0: no copy mode",
            )
        return types.Property(inputs, view=types.View(label="Build a revsearch index"))

    def execute(self, ctx):
        p = ctx.params
        kind = p.get("index_kind", "milvus")
        field = p.get("embeddings_field")
        field = None if field in (None, "", _NO_FIELD) else field
        extractor = None if field else extractor_from_params(p)
        keep_field = (p.get("keep_field") or None) if extractor is not None else None
        results, failures = tools.build_index(
            ctx.view,
            p["brain_key"],
            kind,
            extractor=extractor,
            embeddings_field=field,
            keep_field=keep_field,
            progress=progress_callback(ctx),
            **_index_options(p),
        )
        ctx.ops.reload_dataset()
        return {"brain_key": p["brain_key"], "indexed": results.total_index_size, "failures": failures}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("indexed", label="Samples indexed")
        outputs.obj("failures", label="Images skipped (sample id: reason)", view=types.JSONView())
        return types.Property(outputs)


def _describe(ctx, key: str) -> dict:
    info = ctx.dataset.get_brain_info(key)
    results = ctx.dataset.load_brain_results(key)
    config = results.config
    status = tools.index_status(results)
    return {
        "brain_key": key,
        "index_kind": config.index_kind,
        "extractor": config.extractor,
        "indexed": status["indexed"],
        "stale": status["stale"],
        "not_indexed": len(status["not_indexed"]),
        "deleted": len(status["deleted"]),
        "changed": len(status["changed"]),
        "pca_components": results.pca.output_dim if results.pca else None,
        "retrieval": config.options.to_dict(),
        "milvus": {"uri": config.uri, "collection": config.collection_name} if config.index_kind == "milvus" else None,
        "created": str(info.timestamp),
    }


class ListIndexes(foo.Operator):
    """List the dataset's revsearch indexes."""

    @property
    def config(self):
        return foo.OperatorConfig(name="list_indexes", label="revsearch: list indexes")

    def execute(self, ctx):
        return {"indexes": [_describe(ctx, key) for key in revsearch_keys(ctx)]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("indexes", types.Object(), label="Indexes", view=types.JSONView())
        return types.Property(outputs)


class _OneIndexOperator(foo.Operator):
    """An operator on one index, chosen in its form."""

    def resolve_input(self, ctx):
        inputs = types.Object()
        brain_key_input(ctx, inputs)
        return types.Property(inputs)


class InspectIndex(_OneIndexOperator):
    """Configuration, size and staleness of one index."""

    @property
    def config(self):
        return foo.OperatorConfig(name="inspect_index", label="revsearch: inspect index", dynamic=True)

    def execute(self, ctx):
        return _describe(ctx, ctx.params["brain_key"])

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("indexed", label="Samples indexed")
        outputs.bool("stale", label="Out of date with the dataset")
        outputs.int("not_indexed", label="Samples not in the index")
        outputs.int("deleted", label="Indexed samples since deleted")
        outputs.obj("extractor", label="Feature extractor", view=types.JSONView())
        return types.Property(outputs)


class UpdateIndex(_OneIndexOperator):
    """Bring an index up to date in place: embed new samples, drop deleted ones."""

    @property
    def config(self):
        return long_running_config(
            "update_index", "update index", "Add new samples, re-embed changed files, remove deleted samples"
        )

    def execute(self, ctx):
        results = ctx.dataset.load_brain_results(ctx.params["brain_key"])
        return tools.sync_index(results, progress_callback(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("added", label="Samples added")
        outputs.int("updated", label="Samples re-embedded (file changed)")
        outputs.int("removed", label="Samples removed")
        return types.Property(outputs)


class DeleteIndex(_OneIndexOperator):
    """Delete an index: the brain run and its vectors (Milvus collection)."""

    @property
    def config(self):
        return foo.OperatorConfig(name="delete_index", label="revsearch: delete index", dynamic=True)

    def execute(self, ctx):
        key = ctx.params["brain_key"]
        ctx.dataset.delete_brain_run(key)
        ctx.ops.reload_dataset()
        return {"deleted": key}
