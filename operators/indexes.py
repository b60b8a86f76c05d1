"""Operators that build, list, inspect, update and delete revsearch indexes (brain runs)."""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import fiftyone.operators as foo
import fiftyone.operators.types as types

from revsearch.fiftyone import tools
from revsearch.index.registry import INDEX_KINDS
from revsearch.retrieval.options import RetrievalOptions

from .common import (
    brain_key_input,
    count_input,
    dropdown_input,
    extractor_from_params,
    extractor_inputs,
    long_running_config,
    marker_process_ended,
    new_brain_key_input,
    prompt_output,
    remove_marker,
    revsearch_keys,
    running_markers,
    vector_fields,
    with_progress,
    worker_notice,
)

_NO_FIELD = "(compute now)"
_WHOLE_IMAGES = "(whole images)"
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
        if not _patches_field(params):
            opts["copy_pixels"] = int(params.get("copy_pixels", DEFAULT_COPY_PIXELS) or 0)
    computed_now = params.get("embeddings_field") in (None, "", _NO_FIELD)
    if params.get("regions") and computed_now and params.get("features", "cnn") == "cnn" and not _patches_field(params):
        opts["regions"] = True
    if _patches_field(params):
        opts.update(
            patches_field=_patches_field(params),
            force_square=bool(params.get("force_square", False)),
            alpha=params.get("alpha") or None,
        )
    return {k: v for k, v in opts.items() if v is not None}


def _patches_field(params: dict) -> str | None:
    """The label field whose objects the form indexes; None for whole images."""
    field = params.get("patches_field")
    return None if field in (None, "", _WHOLE_IMAGES) else field


def _objects_inputs(ctx, inputs: types.Object) -> bool:
    """What to index: whole images, or the objects of a detections / polylines field (and how to crop
    them); True when objects were chosen."""
    fields = sorted(tools.object_fields(ctx.dataset)) if ctx.dataset is not None else []
    if not fields:
        return False
    dropdown_input(
        inputs,
        "patches_field",
        [_WHOLE_IMAGES, *fields],
        "What to index",
        description="whole images, or each object of a label field (search and sort its patches view)",
        default=_WHOLE_IMAGES,
    )
    if not _patches_field(ctx.params):
        return False
    inputs.bool("force_square", default=False, label="Square crops", description="grow each box into a square")
    inputs.float("alpha", label="Grow boxes by", description="e.g. 0.1 = 10% larger on each side; empty: as drawn")
    return True


class BuildIndex(foo.Operator):
    """Index the current view under a brain key: Milvus, K-means IVF or exact, over CNN or pixel features."""

    @property
    def config(self):
        return long_running_config(
            "build_index",
            "build index",
            "Index the current view for search by image and the App's sort by similarity",
            streams=True,
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
            count_input(ctx, inputs, "n_clusters", 1, label="Clusters", description="empty: about 4 x sqrt(N)")
            count_input(
                ctx, inputs, "nprobe", 1, label="Clusters probed per query", description="empty: 1/20 of the clusters"
            )
        objects = _objects_inputs(ctx, inputs)
        if not objects:
            dropdown_input(
                inputs,
                "embeddings_field",
                [_NO_FIELD] + vector_fields(ctx),
                "Embeddings",
                required=False,
                description="an existing embeddings field, or compute embeddings now",
                default=_NO_FIELD,
            )
        if objects:
            extractor_inputs(ctx, inputs)
        elif ctx.params.get("embeddings_field", _NO_FIELD) == _NO_FIELD:
            extractor_inputs(ctx, inputs)
            if ctx.params.get("features", "cnn") == "cnn":
                inputs.bool(
                    "regions",
                    default=False,
                    label="Also index regions",
                    description="13 regions per image from the same pass (14x the vectors): search by image "
                    "then finds the images that contain a crop, and boxes where",
                )
            inputs.str(
                "keep_field",
                default=tools.kept_field_name(ctx.params.get("brain_key") or "revsearch"),
                label="Keep embeddings in field",
                description="the computed vectors are also stored in this sample field (for "
                "'fit PCA' and 'fit K-means'), one field per index; empty: do not keep them",
            )
        if ctx.params.get("features", "cnn") != "pixel":
            count_input(ctx, inputs, "pca_components", 1, label="PCA components", description="empty: no PCA")
        if ctx.params.get("features", "cnn") != "pixel" and not objects:
            count_input(
                ctx,
                inputs,
                "copy_pixels",
                0,
                default=DEFAULT_COPY_PIXELS,
                label="Copy-mode thumbnails",
                description="side (pixels) of the thumbnails kept for searching edited copies; 0: no copy mode",
            )
        worker_notice(inputs)
        return types.Property(inputs, view=types.View(label="Build a revsearch index"))

    def execute(self, ctx):
        marker = ("build", ctx.params["brain_key"], {"index_kind": ctx.params.get("index_kind", "milvus")})
        return with_progress(
            ctx, lambda progress: self._build(ctx, progress), _build_outputs(), reload=True, marker=marker
        )

    def _build(self, ctx, progress) -> dict:
        p = ctx.params
        kind = p.get("index_kind", "milvus")
        field = p.get("embeddings_field")
        field = None if field in (None, "", _NO_FIELD) or _patches_field(p) else field
        extractor = None if field else extractor_from_params(p)
        keep_field = p.get("keep_field", tools.kept_field_name(p["brain_key"])) if extractor is not None else None
        keep_field = None if _patches_field(p) else keep_field
        results, failures = tools.build_index(
            ctx.view,
            p["brain_key"],
            kind,
            extractor=extractor,
            embeddings_field=field,
            keep_field=keep_field,
            progress=progress,
            **_index_options(p),
        )
        if keep_field:
            tools.set_field_info(ctx.dataset, keep_field, {tools.INDEX_INFO: p["brain_key"]})
        return {
            "brain_key": p["brain_key"],
            "indexed": results.total_index_size,
            "keep_field": keep_field,
            "failures": failures,
        }

    def resolve_output(self, ctx):
        return prompt_output(ctx, _build_outputs())


def _build_outputs() -> types.Property:
    outputs = types.Object()
    outputs.int("indexed", label="Samples indexed")
    outputs.str("keep_field", label="Embeddings kept in field")
    outputs.obj("failures", label="Images skipped (sample id: reason)", view=types.JSONView())
    return types.Property(outputs)


def _describe(ctx, key: str) -> dict:
    info = ctx.dataset.get_brain_info(key)
    results = ctx.dataset.load_brain_results(key)
    config = results.config
    status = tools.index_status(results)
    return {
        "brain_key": key,
        "status": "out of date" if status["stale"] else "ready",
        "index_kind": config.index_kind,
        "extractor": config.extractor,
        "features": tools.describe_extractor(config.extractor),
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


#: The columns of the list of indexes: key in :func:`_describe`'s rows, header.
LIST_COLUMNS = {
    "brain_key": "Index (brain key)",
    "status": "Status",
    "index_kind": "Kind",
    "features": "Features",
    "indexed": "Samples indexed",
    "not_indexed": "Not indexed",
    "deleted": "Deleted since",
    "changed": "Files changed",
}


class ListIndexes(foo.Operator):
    """List the dataset's revsearch indexes as a table."""

    @property
    def config(self):
        return foo.OperatorConfig(name="list_indexes", label="revsearch: list indexes")

    def execute(self, ctx):
        markers = running_markers(ctx.dataset) if ctx.dataset is not None else {}
        rows = {}
        for key in revsearch_keys(ctx):
            try:
                rows[key] = _describe(ctx, key)
            except Exception:  # noqa: BLE001  (a build registers its run before it stores the vectors)
                if key not in markers:
                    raise
        for key, marker in markers.items():
            row = rows.setdefault(key, {"brain_key": key, "index_kind": marker.get("index_kind", "")})
            row["status"] = _running_status(marker)
            if marker_process_ended(marker):
                remove_marker(ctx.dataset, key, marker)
        return {"indexes": [{c: row.get(c, "") for c in LIST_COLUMNS} for row in rows.values()]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        table = types.TableView()
        for key, header in LIST_COLUMNS.items():
            table.add_column(key, label=header)
        outputs.list("indexes", types.Object(), label="Indexes", view=table)
        return types.Property(outputs)


def _running_status(marker: dict, now: datetime | None = None) -> str:
    """The status of a build / update recorded by ``running_marker``: "building: 120/300 images, started
    2 min ago"; for one whose process has ended, that it was interrupted (its marker is then removed)."""
    action = marker.get("action", "build")
    if marker_process_ended(marker):
        again = "run the build again" if action == "build" else "run update index again"
        return f"interrupted {action} (process {marker.get('pid')} ended): marker removed, {again}"
    started = datetime.fromisoformat(marker["started"])
    seconds = max(((now or datetime.now(timezone.utc)) - started).total_seconds(), 0)
    said = "building" if action == "build" else "updating"
    if marker.get("total"):
        said += f": {marker['done']}/{marker['total']} {marker.get('unit', 'images')},"
    said += f" started {_ago(seconds)}"
    if marker.get("host") != socket.gethostname():
        said += f" (on {marker.get('host')}, process {marker.get('pid')})"
    return said


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


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
            "update_index",
            "update index",
            "Add new samples, re-embed changed files, remove deleted samples",
            streams=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        brain_key_input(ctx, inputs)
        worker_notice(inputs)
        return types.Property(inputs)

    def execute(self, ctx):
        results = ctx.dataset.load_brain_results(ctx.params["brain_key"])
        marker = ("update", ctx.params["brain_key"], {"index_kind": results.config.index_kind})
        return with_progress(
            ctx, lambda progress: tools.sync_index(results, progress), _update_outputs(), marker=marker
        )

    def resolve_output(self, ctx):
        return prompt_output(ctx, _update_outputs())


def _update_outputs() -> types.Property:
    outputs = types.Object()
    outputs.int("added", label="Samples added")
    outputs.int("updated", label="Samples re-embedded (file changed)")
    outputs.int("removed", label="Samples removed")
    return types.Property(outputs)


class DeleteIndex(foo.Operator):
    """Delete an index (the brain run and its vectors), chosen and confirmed in the form."""

    @property
    def config(self):
        return foo.OperatorConfig(name="delete_index", label="revsearch: delete index", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = brain_key_input(ctx, inputs, preselect=False)
        if key:
            prop = inputs.bool("confirm", default=False, label=f"Yes, delete {_what(ctx, key)}")
            if not ctx.params.get("confirm"):
                prop.invalid, prop.error_message = True, "Tick to confirm: this cannot be undone"
        return types.Property(inputs, view=types.View(label="Delete a revsearch index"))

    def execute(self, ctx):
        key = ctx.params["brain_key"]
        what = _what(ctx, key)
        ctx.dataset.delete_brain_run(key)
        ctx.ops.reload_dataset()
        return {"deleted": key, "message": f"Deleted {what}"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Done")
        return types.Property(outputs)


def _what(ctx, key: str) -> str:
    """Index ``key`` named with its kind, features and size, as the delete form confirms it."""
    results = ctx.dataset.load_brain_results(key)
    features = tools.describe_extractor(results.config.extractor)
    return f"index '{key}' ({results.config.index_kind}, {features}, {results.total_index_size} samples)"
