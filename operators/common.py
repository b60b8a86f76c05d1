"""Form pieces and parameter parsing shared by the operators."""

from __future__ import annotations

import functools
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.message import GeneratedMessage

from revsearch.errors import RevsearchError, WeightsUnavailableError
from revsearch.features.backbones import DEFAULT_BACKBONE, FEATURE_DIMS
from revsearch.features.factory import FEATURES, make_extractor
from revsearch.features.pipeline import FeatureExtractor
from revsearch.fiftyone import tools
from revsearch.fiftyone.brain import BACKEND_NAME

DEFAULT_EMBEDDINGS_FIELD = "revsearch_embedding"
#: Targets of a search: the whole dataset (default) or only the view shown in the App.
TARGETS = {"dataset": "Whole dataset", "view": "Current view only"}
#: File-name endings the upload box accepts. FiftyOne's FileView keeps a file only when its *name ends
#: with* one of these (it does not understand MIME patterns such as ``image/*``), case-sensitively.
IMAGE_SUFFIXES = [
    s for ext in ("jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp") for s in (f".{ext}", f".{ext.upper()}")
]
#: Up to this many samples to embed, the forms tick "Update the index first" by default.
SMALL_UPDATE = 200
WORKER_HINT = "Schedule (the arrow beside Execute) needs a worker: start one with 'fiftyone delegated launch'"
#: A scheduled operation still queued after this long means that no worker is taking them.
WORKER_WAIT = timedelta(seconds=30)
#: Errors that are the user's to fix (input, files, a busy or damaged index): in the App, one line and
#: the form again with the input kept; any other error is FiftyOne's error with its traceback.
USER_ERRORS = (RevsearchError, ValueError)


def in_app_prompt(ctx) -> bool:
    """Whether the operator runs now in an App prompt (the App sends its layout with each request)."""
    return not ctx.delegated and "spaces" in ctx.request_params


def reopen_on_error(execute: Callable) -> Callable:
    """Decorate an operator's ``execute``: in an App prompt a :data:`USER_ERRORS` error is shown as an
    error notice and the form opens again with the user's input (FiftyOne replaces it by the error).
    Only for operators without ``resolve_output``: the App closes the prompt once that resolves, the
    reopened form with it."""

    @functools.wraps(execute)
    def run(self, ctx):
        try:
            return execute(self, ctx)
        except USER_ERRORS as exc:
            if not in_app_prompt(ctx):
                raise
            ctx.ops.notify(str(exc), variant="error")
            ctx.prompt(ctx.operator_uri, params=ctx.params)

    return run


def long_running_config(name: str, label: str, description: str, streams: bool = False) -> foo.OperatorConfig:
    """The config of an operator that may run for minutes: in the App, or delegated to a worker;
    ``streams``: its ``execute`` returns :func:`with_progress`."""
    return foo.OperatorConfig(
        name=name,
        label=f"revsearch: {label}",
        description=f"{description}. {WORKER_HINT}",
        dynamic=True,
        execute_as_generator=streams,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


def worker_notice(inputs: types.Object) -> None:
    """The form's last line: Schedule needs a worker, said as a warning when scheduled operations already
    wait for one (FiftyOne records no running workers: operations left queued are the sign that none runs)."""
    from fiftyone.operators.delegated import DelegatedOperationService

    cutoff = datetime.utcnow() - WORKER_WAIT
    waiting = [op.queued_at for op in DelegatedOperationService().get_queued_operations() if op.queued_at]
    waiting = [t for t in waiting if t < cutoff]
    if not waiting:
        inputs.view("worker", types.Notice(label=WORKER_HINT))
        return
    minutes = (datetime.utcnow() - min(waiting)).total_seconds() / 60
    inputs.view(
        "no_worker",
        types.Warning(
            label=f"No worker is running: {len(waiting)} scheduled operations wait, the oldest for {minutes:.0f} min",
            description="Schedule (the arrow beside Execute) only queues the operation: start a worker with "
            "'fiftyone delegated launch' in a terminal, or click Execute to run it now",
        ),
    )


def progress_callback(ctx):
    """A ``progress(fraction, label)`` callback reporting through ``ctx.set_progress``."""
    return lambda fraction, label: ctx.set_progress(progress=fraction, label=label)


def with_time_left(report: Callable[[float, str], None]) -> Callable[[float, str], None]:
    """A ``progress(fraction, label)`` callback passing ``label`` on with the time left, estimated from
    the pace so far: "embedded 120/300 images, ~40 s left"."""
    start = time.monotonic()

    def progress(fraction: float, label: str) -> None:
        if 0 < fraction < 1:
            left = (time.monotonic() - start) * (1 - fraction) / fraction
            label += f", ~{left:.0f} s left" if left < 90 else f", ~{left / 60:.0f} min left"
        report(fraction, label)

    return progress


#: Dataset ``info`` key holding a marker per build / update running now, by brain key (see
#: :func:`running_marker`): what *list indexes* shows of a run started in another tab or before a reload.
RUNNING_INFO = "revsearch_building"
#: Seconds between two writes of a running build's marker.
MARKER_EVERY = 2.0


def _marker_update(dataset, key: str, marker: dict | None, only_if: dict | None = None) -> None:
    """Set (``marker``) or remove (None) the marker of ``key`` in ``dataset.info[RUNNING_INFO]``, as one
    atomic update of that key in the database: runs of other keys, in other processes too, never erase
    each other's markers (no read-modify-write). ``only_if``: remove it only while it still has these
    values (not a newer run's marker)."""
    doc = dataset._root_dataset._doc
    path = f"info.{RUNNING_INFO}.{key}"
    query = {"_id": doc.id, **{f"{path}.{k}": v for k, v in (only_if or {}).items()}}
    update = {"$set": {path: marker}} if marker is not None else {"$unset": {path: ""}}
    type(doc)._get_collection().update_one(query, update)


def running_markers(dataset) -> dict[str, dict]:
    """The markers of the builds / updates running on ``dataset`` now (or interrupted), by brain key, as
    stored now (read from the database, not from this process's copy of ``dataset.info``)."""
    doc = dataset._root_dataset._doc
    found = type(doc)._get_collection().find_one({"_id": doc.id}, {f"info.{RUNNING_INFO}": 1}) or {}
    return dict((found.get("info") or {}).get(RUNNING_INFO) or {})


def marker_process_ended(marker: dict) -> bool:
    """Whether the process that wrote ``marker`` ran on this host and has ended (the run was killed)."""
    if marker.get("host") != socket.gethostname() or not marker.get("pid"):
        return False
    try:
        os.kill(int(marker["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False


def remove_marker(dataset, key: str, marker: dict) -> None:
    """Remove the marker ``marker`` of ``key`` (left by an interrupted run), unless a new run replaced it."""
    _marker_update(dataset, key, None, only_if={"pid": marker.get("pid"), "started": marker.get("started")})


@contextmanager
def running_marker(dataset, key: str, action: str, **about):
    """Record in ``dataset.info[RUNNING_INFO][key]`` that ``action`` ("build", "update") runs on index
    ``key`` in this process, and remove it when the run ends, also when it fails. Yields a
    ``progress(fraction, label)`` callback that updates the counts, at most every :data:`MARKER_EVERY` s.
    ``about``: more to record (e.g. the index kind)."""
    marker = {
        "action": action,
        "done": 0,
        "total": None,
        "unit": "images",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **about,
    }
    _marker_update(dataset, key, marker)
    last = time.monotonic()

    def progress(fraction: float, label: str) -> None:
        nonlocal last
        if time.monotonic() - last < MARKER_EVERY:
            return
        last = time.monotonic()
        counts = re.search(r"(\d+)/(\d+) (\w+)", label)
        if counts:
            marker.update(done=int(counts[1]), total=int(counts[2]), unit=counts[3])
        marker["fraction"] = round(float(fraction), 4)
        _marker_update(dataset, key, marker)

    try:
        yield progress
    finally:
        remove_marker(dataset, key, marker)


def _marked(ctx, work: Callable, marker: tuple[str, str, dict]) -> Callable:
    """``work`` run under :func:`running_marker` ``(action, brain key, about)``, its progress also noted there."""
    action, key, about = marker

    def run(progress):
        with running_marker(ctx.dataset, key, action, **about) as note:
            return work(lambda fraction, label: (note(fraction, label), progress(fraction, label)))

    return run


def with_progress(
    ctx,
    work: Callable[[Callable[[float, str], None]], dict],
    outputs: types.Property,
    reload=False,
    marker: tuple[str, str, dict] | None = None,
):
    """Run ``work(progress)`` and return its result. In an App prompt (executed now) this is a generator
    streaming each progress label (with the time left), then the result shown as ``outputs``, in the App's
    output dialog: FiftyOne shows progress only from generator operators (their ``resolve_output`` is then
    :func:`prompt_output`). Elsewhere (SDK, scheduled run) progress goes to ``ctx.set_progress``.
    ``reload``: reload the dataset in the App afterwards. ``marker``: ``(action, brain key, about)``, to
    record the run in the dataset while it lasts (:func:`running_marker`), for *list indexes*."""
    if marker is not None:
        work = _marked(ctx, work, marker)
    if not in_app_prompt(ctx):
        result = work(with_time_left(progress_callback(ctx)))
        if reload:
            ctx.ops.reload_dataset()
        return result
    return _streamed(ctx, work, outputs, reload)


def prompt_output(ctx, outputs: types.Property) -> types.Property | None:
    """The prompt's output of a :func:`with_progress` operator: none after a streamed run (its result is
    in the output dialog already, so the prompt closes), else ``outputs``."""
    return outputs if ctx.results else None


def _streamed(ctx, work, outputs: types.Property, reload: bool) -> Iterator[GeneratedMessage]:
    """:func:`with_progress` in an App prompt: ``work`` runs in a thread while its progress is yielded."""
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work(with_time_left(lambda fraction, label: updates.put((fraction, label))))
        except Exception as exc:  # noqa: BLE001  (shown in the prompt, as FiftyOne shows an operator's error)
            outcome["error"] = str(exc) or type(exc).__name__
        finally:
            updates.put(None)

    threading.Thread(target=run, name=f"revsearch-{ctx.operator_uri}", daemon=True).start()
    while (update := updates.get()) is not None:
        yield ctx.ops.set_progress(label=update[1], progress=update[0])
    if "error" in outcome:  # (a generator operator cannot raise to the App: its stream just ends)
        yield ctx.ops.notify(outcome["error"], variant="error")
        return
    if reload:
        yield ctx.ops.reload_dataset()
    yield ctx.ops.show_output(outputs.to_json(), outcome["result"])


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
    preselect: bool = True,
    shown: dict[str, str] | None = None,
) -> None:
    """A dropdown over ``choices`` (free text allowed when there are none yet); ``shown``: labels by choice."""
    if not choices:
        inputs.str(name, label=label, description=description, required=required, default=default)
        return
    dropdown = types.DropdownView()
    for choice in choices:
        dropdown.add_choice(choice, label=(shown or {}).get(choice, choice))
    inputs.enum(
        name,
        dropdown.values(),
        label=label,
        description=description,
        required=required,
        default=default if default in choices else choices[0] if required and preselect else None,
        view=dropdown,
    )


def count_input(ctx, inputs: types.Object, name: str, minimum: int, **kwargs) -> None:
    """An integer box flagged in the form when below ``minimum`` (FiftyOne's own ``min`` says "greater
    than" although it accepts the bound itself)."""
    prop = inputs.int(name, **kwargs)
    value = ctx.params.get(name)
    if isinstance(value, (int, float)) and value < minimum:
        prop.invalid, prop.error_message = True, f"Must be at least {minimum}"


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


def embeddings_field_input(ctx, inputs: types.Object, name: str = "embeddings_field") -> str | None:
    """An existing embeddings field, with which index and features it holds and how many samples of the
    view lack it; None (with a notice) when the dataset has none yet."""
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
        return None
    default = DEFAULT_EMBEDDINGS_FIELD if DEFAULT_EMBEDDINGS_FIELD in fields else fields[0]
    dropdown_input(inputs, name, fields, "Embeddings field", default=default)
    field = ctx.params.get(name) or default
    if field in fields:
        missing = len(ctx.view) - len(ctx.view.exists(field))
        note = f" {missing} samples of the view have no vector there and are left out." if missing else ""
        inputs.view(f"{name}_info", types.Notice(label=tools.describe_field(ctx.dataset, field) + "." + note))
    return field


def brain_key_input(ctx, inputs: types.Object, preselect: bool = True) -> str | None:
    """The index (brain key) selector; the chosen key, or None (with a notice) when the dataset has no
    index (or, without ``preselect``, none is chosen yet)."""
    keys = revsearch_keys(ctx)
    if not keys:
        inputs.view(
            "none",
            types.Warning(label="No revsearch index yet", description="Build one first with 'revsearch: build index'."),
        )
        return None
    dropdown_input(inputs, "brain_key", keys, "Index (brain key)", preselect=preselect)
    key = ctx.params.get("brain_key") or (keys[0] if preselect else None)
    return key if key in keys else None


def stale_index_input(ctx, inputs: types.Object, key: str | None) -> None:
    """Says how far index ``key`` is behind the dataset and offers to update it first (ticked when
    few samples are to embed). Cheap: compares ids, does not look at the files."""
    if not key:
        return
    status = tools.index_status(ctx.dataset.load_brain_results(key), check_files=False)
    missing, deleted = len(status["not_indexed"]), len(status["deleted"])
    if not (missing or deleted):
        return
    inputs.view(
        "stale",
        types.Warning(
            label=f"Index '{key}' is out of date: {missing} samples not indexed, {deleted} indexed samples deleted",
            description="samples not indexed are never found; tick 'Update the index first' "
            "(or run 'revsearch: update index')",
        ),
    )
    inputs.bool(
        "update_first",
        default=missing <= SMALL_UPDATE,
        label="Update the index first",
        description=f"embed the {missing} new samples and drop the {deleted} deleted ones, then run",
    )


def update_if_asked(ctx, results) -> None:
    """Run ``tools.sync_index`` on ``results`` when the form's 'Update the index first' is ticked."""
    if ctx.params.get("update_first"):
        tools.sync_index(results, progress_callback(ctx))


def copy_mode_error(ctx, brain_key: str | None) -> str | None:
    """Why index ``brain_key`` cannot search edited copies (it keeps no thumbnails), or None."""
    if (
        not brain_key
        or brain_key not in revsearch_keys(ctx)
        or ctx.dataset.get_brain_info(brain_key).config.copy_pixels
    ):
        return None
    if (ctx.dataset.get_brain_info(brain_key).config.extractor or {}).get("type") == "pixel":
        return f"Index '{brain_key}' holds pixel features: build an index with Features = cnn to search edited copies"
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
    present = {name: tools.present_weights(name) for name in sorted(FEATURE_DIMS)}
    offline = next((b for b in [DEFAULT_BACKBONE, *present] if present[b]), DEFAULT_BACKBONE)
    shown = {b: f"{b} (weights present)" if w else f"{b} (weights will be downloaded)" for b, w in present.items()}
    dropdown_input(inputs, "backbone", list(present), "Backbone", default=offline, shown=shown)
    backbone = ctx.params.get("backbone") or offline
    here = present.get(backbone) or []
    inputs.str(
        "weights",
        default=here[0] if here else "DEFAULT",
        label="Weights",
        description=(f"present here: {', '.join(here)}" if here else "none present here: downloaded on first use")
        + ". DEFAULT (also when empty): the backbone's ImageNet weights; a torchvision weights name "
        "(e.g. IMAGENET1K_V1), a local .pth file, or 'random' (untrained, for tests only)",
    )
    inputs.enum(
        "pooling",
        ["gem", "avg"],
        default="gem",
        label="Pooling",
        description="GeM (generalised mean, p=3) or average pooling of the last feature map",
    )
    count_input(ctx, inputs, "batch_size", 1, default=32, label="Batch size")


def weights_from_form(value: str | None) -> str | None:
    """The Weights box: empty means DEFAULT (never random); 'random' asks for untrained weights (None)."""
    weights = (value or "").strip() or "DEFAULT"
    return None if weights.lower() == "random" else weights


def weights_error(params: dict) -> ValueError:
    """Weights that could not be loaded, said in the build form's words."""
    import torch

    backbone = params.get("backbone", DEFAULT_BACKBONE)
    return ValueError(
        f"The {backbone} weights '{(params.get('weights') or 'DEFAULT').strip()}' are not on this machine "
        f"and could not be downloaded. Choose a backbone marked 'weights present', put the weight file in "
        f"{torch.hub.get_dir()}/checkpoints, or type a local .pth file in Weights "
        "('random': untrained weights, for tests only)."
    )


def extractor_from_params(params: dict) -> FeatureExtractor:
    """The extractor described by :func:`extractor_inputs` values."""
    if params.get("features", "cnn") == "pixel":
        return make_extractor("pixel")
    try:
        return make_extractor(
            {
                "type": "cnn",
                "backbone": params.get("backbone", DEFAULT_BACKBONE),
                "weights": weights_from_form(params.get("weights")),
                "pooling": params.get("pooling", "gem"),
                "batch_size": int(params.get("batch_size", 32)),
            }
        )
    except WeightsUnavailableError:
        raise weights_error(params) from None
