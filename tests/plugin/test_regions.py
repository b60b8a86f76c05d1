"""Search by region on FiftyOne: an index built with ``regions=True`` finds the photo an object crop
was pasted into, draws the matched region, keeps whole-image results unchanged, and refuses bad boxes
in one line. Real Caltech photos, MobileNetV2 weights from the team share."""

from __future__ import annotations

import cv2
import fiftyone as fo
import pytest

from plugin_helpers import MODEL, unique_name
from revsearch.features.cnn import Embedder, EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.fiftyone import tools
from revsearch.fiftyone.region_query import REGION_FIELD, region_view

CONFIG = EmbedderConfig(**MODEL)
KINDS = ("exact", "kmeans", pytest.param("milvus", marks=pytest.mark.slow))


def iou(a, b) -> float:
    inter = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])) * max(
        0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    )
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def composite(caltech_files, tmp_path_factory):
    """A Leopards photo pasted at 25 % of the area into the bottom right of an airplane photo; the
    dataset holds the composite, the untouched airplane photo and the other photos (not the leopard)."""
    folder = tmp_path_factory.mktemp("composite")
    leopard = next(f for f in caltech_files if "Leopards" in f)
    plane = next(f for f in caltech_files if "airplanes" in f)
    background, obj = load_image(plane), load_image(leopard)
    h, w = background.shape[:2]
    box = [0.45, 0.45, 0.5, 0.5]
    x, y, bw, bh = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    pasted = background.copy()
    pasted[y : y + bh, x : x + bw] = cv2.resize(obj, (bw, bh), interpolation=cv2.INTER_AREA)
    path = str(folder / "composite.jpg")
    cv2.imwrite(path, cv2.cvtColor(pasted, cv2.COLOR_RGB2BGR))
    crop = str(folder / "leopard.jpg")
    cv2.imwrite(crop, cv2.cvtColor(obj, cv2.COLOR_RGB2BGR))
    files = [path] + [f for f in caltech_files if f != leopard]
    return files, crop, [x / w, y / h, bw / w, bh / h]


@pytest.fixture(scope="module", params=KINDS)
def indexed(request, composite, tmp_path_factory):
    files, _, _ = composite
    ds = fo.Dataset(unique_name("regions"))
    ds.add_samples([fo.Sample(filepath=f) for f in files])
    options = {"uri": str(tmp_path_factory.mktemp("lite") / "r.db")} if request.param == "milvus" else {}
    tools.build_index(ds, "plain", request.param, Embedder(CONFIG), **options)
    results, failures = tools.build_index(ds, "reg", request.param, Embedder(CONFIG), regions=True, **options)
    assert not failures
    yield ds, results
    ds.delete()


def test_a_crop_finds_the_photo_it_was_pasted_into_and_the_region_is_drawn(indexed, composite):
    ds, results = indexed
    _, crop, pasted = composite
    view = region_view(results, ds, crop, k=5, dist_field="region_dist")
    assert view.first().filepath.endswith("composite.jpg")
    match = view.first()[REGION_FIELD]
    assert isinstance(match, fo.Detection) and iou(match.bounding_box, pasted) > 0.2
    assert len(view) == 5 and all(view.values("region_dist"))
    assert len(ds.exists(REGION_FIELD)) == 5  # earlier results' boxes cleared


def test_a_box_on_a_sample_is_a_query_too(indexed, composite):
    ds, results = indexed
    _, _, pasted = composite
    sample_id = ds.match(fo.ViewField("filepath").ends_with("composite.jpg")).first().id
    view = region_view(results, ds.exclude(sample_id), sample_id, k=3, box=pasted)
    assert len(view) == 3 and sample_id not in view.values("id")  # the view is respected
    assert region_view(results, ds, sample_id, k=1, box=pasted).first().id == sample_id


def test_whole_image_queries_rank_as_on_an_index_without_regions(indexed):
    ds, results = indexed
    query = ds.skip(4).first().id
    plain = ds.load_brain_results("plain")
    for r in (results, plain):
        r.use_view(ds)
    assert results.sort_by_similarity(query, k=8).values("id") == plain.sort_by_similarity(query, k=8).values("id")
    assert results.total_index_size == len(ds)


def test_regions_survive_a_reload_and_leave_with_their_sample(indexed, composite):
    ds, results = indexed
    _, crop, _ = composite
    reloaded = ds.load_brain_results("reg", cache=False)
    first = region_view(reloaded, ds, crop, k=1).first()
    assert first.filepath.endswith("composite.jpg")
    reloaded.remove_from_index([first.id])
    assert first.id not in region_view(reloaded, ds, crop, k=len(ds)).values("id")
    tools.sync_index(reloaded)  # back in, regions too
    assert region_view(reloaded, ds, crop, k=1).first().id == first.id


@pytest.mark.parametrize(
    "box, message",
    [
        ([0.5, 0.5, 0.0, 0.2], "no area"),
        ([0.9, 0.1, 0.3, 0.3], "outside the image"),
        ([0.1, 0.1, 0.01, 0.01], "at least 32 px a side"),
    ],
)
def test_bad_boxes_are_refused_in_one_line(indexed, box, message):
    ds, results = indexed
    with pytest.raises(ValueError, match=message) as info:
        region_view(results, ds, ds.first().id, k=3, box=box)
    assert "\n" not in str(info.value)


def test_an_index_without_regions_says_how_to_get_them(indexed, composite):
    ds, _ = indexed
    with pytest.raises(ValueError, match="holds no regions: build it with regions on"):
        region_view(ds.load_brain_results("plain"), ds, composite[1], k=3)
    with pytest.raises(ValueError, match="choose cnn features"):
        tools.build_index(ds, "px_regions", "exact", tools.make_extractor("pixel"), regions=True)
    assert "px_regions" not in ds.list_brain_runs()
