"""Retrieval options stored with a SearchIndex: applied to queries after reload, DBA kept equal to a
rebuild through sync / remove, copy mode on real edited copies, old manifests read as options off."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from helpers import write_edited_copy
from revsearch import ExactIndex, SearchIndex
from revsearch.folder.generations import MANIFEST
from revsearch.retrieval.options import RetrievalOptions


@pytest.fixture
def folder(tmp_path, subset_paths):
    root = tmp_path / "images"
    root.mkdir()
    out = []
    for p in subset_paths:
        shutil.copy(p, root / f"{p.parent.name}_{p.name}")
        out.append(root / f"{p.parent.name}_{p.name}")
    return out


def _augmented_by_key(index: SearchIndex) -> dict[str, np.ndarray]:
    keys = index.backend.keys()
    return dict(zip(keys, index.backend.store.vectors[index.backend.store.rows_of(keys)]))


@pytest.mark.parametrize("backend", ["exact", "kmeans"])
def test_dba_stays_equal_to_a_rebuild_through_updates(pretrained_mobilenet, folder, tmp_path, backend):
    options = RetrievalOptions(qe_n=2, dba_n=2, copy_pixels=8)
    extra = {"n_clusters": 3} if backend == "kmeans" else {}
    index, _ = SearchIndex.build(
        folder[:16], tmp_path / "idx", backend, pretrained_mobilenet, progress=False, options=options, **extra
    )
    folder[0].unlink()
    shutil.copy(folder[20], folder[2])  # changed content
    index.sync(folder[1:20], progress=False)
    index.remove([str(folder[5])])
    again = SearchIndex.load(tmp_path / "idx")
    assert again.options == options and len(again.extras.pixels) == len(again) == 18
    rebuilt, _ = SearchIndex.build(
        [p for p in folder[1:20] if p != folder[5]],
        tmp_path / "fresh",
        "exact",
        pretrained_mobilenet,
        progress=False,
        options=options,
    )
    got, want = _augmented_by_key(again), _augmented_by_key(rebuilt)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5)
    a, b = again.query(folder[7], k=3), rebuilt.query(folder[7], k=3)
    assert [h.key for h in a] == [h.key for h in b]
    np.testing.assert_allclose([h.distance for h in a], [h.distance for h in b], atol=1e-5)


def test_query_expansion_is_applied_after_reload(pretrained_mobilenet, folder, tmp_path):
    plain, _ = SearchIndex.build(
        folder, tmp_path / "plain", "exact", pretrained_mobilenet, progress=False, options=RetrievalOptions.off()
    )
    qe, _ = SearchIndex.build(
        folder,
        tmp_path / "qe",
        "exact",
        pretrained_mobilenet,
        progress=False,
        options=RetrievalOptions(qe_n=3, dba_n=0, copy_pixels=0),
    )
    reloaded = SearchIndex.load(tmp_path / "qe")
    a, b = plain.query(folder[3], k=5), reloaded.query(folder[3], k=5)
    assert b == qe.query(folder[3], k=5) and a != b  # expansion changed the distances
    vector = reloaded.embed_query(folder[3])
    assert reloaded.query_vectors(vector, k=5)[0] == b
    assert json.loads((tmp_path / "qe" / MANIFEST).read_text())["retrieval"]["qe_n"] == 3


def test_copy_mode_finds_strongly_edited_copies(pretrained_mobilenet, folder, tmp_path):
    index, _ = SearchIndex.build(
        folder,
        tmp_path / "idx",
        "exact",
        pretrained_mobilenet,
        progress=False,
        options=RetrievalOptions(copy_pixels=16),
    )  # DBA on: copies use the originals
    for i, src in enumerate(folder[::5]):
        image = cv2.imread(str(src))
        small = cv2.resize(image, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(tmp_path / f"small{i}.png"), small)
        assert index.query(tmp_path / f"small{i}.png", k=3, mode="copy")[0].key == str(src)
        edited = write_edited_copy(src, tmp_path / f"e{i}.jpg", i)
        hits = index.query(edited, k=3, mode="copy")
        assert hits[0].key == str(src) and hits[0].distance < hits[1].distance
    with pytest.raises(ValueError, match="mode must be one of"):
        index.query(folder[0], mode="nope")


def test_copy_mode_finds_upside_down_copies_the_similar_mode_ranks_lower(pretrained_mobilenet, folder, tmp_path):
    """The copy mode also searches the query turned 180 degrees: an upside-down, slightly cropped copy
    is found first, each time, while the similar mode (one CNN ranking) misses some."""
    index, _ = SearchIndex.build(
        folder, tmp_path / "idx", "exact", pretrained_mobilenet, progress=False, options=RetrievalOptions(dba_n=0)
    )
    missed_by_similar = 0
    for i, src in enumerate(folder):
        image = cv2.imread(str(src))
        h, w = image.shape[:2]
        turned = cv2.rotate(image[h // 10 :, w // 10 :], cv2.ROTATE_180)
        cv2.imwrite(str(tmp_path / f"turned{i}.png"), turned)
        assert index.query(tmp_path / f"turned{i}.png", k=3, mode="copy")[0].key == str(src)
        missed_by_similar += index.query(tmp_path / f"turned{i}.png", k=1)[0].key != str(src)
    assert missed_by_similar > 0


def test_old_manifest_means_options_off_and_copy_mode_explains(pretrained_mobilenet, folder, tmp_path):
    SearchIndex.build(
        folder[:8], tmp_path / "idx", "exact", pretrained_mobilenet, progress=False, options=RetrievalOptions.off()
    )
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    manifest.pop("retrieval")
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps(manifest))
    index = SearchIndex.load(tmp_path / "idx")
    assert index.options == RetrievalOptions.off()
    assert index.query(folder[1], k=1)[0].distance < 1e-6
    with pytest.raises(ValueError, match="copy_pixels"):
        index.query(folder[1], mode="copy")


def test_options_validate():
    with pytest.raises(ValueError, match="qe_n"):
        RetrievalOptions(qe_n=-1)
    assert RetrievalOptions.from_dict(RetrievalOptions().to_dict()) == RetrievalOptions()


@pytest.mark.slow
def test_cli_stores_the_options_and_queries_in_copy_mode(subset_paths, tmp_path):
    import os
    import subprocess
    import sys

    from helpers import TORCH_CACHE

    images = tmp_path / "photos"
    images.mkdir()
    for p in subset_paths[:10]:
        shutil.copy(p, images / f"{p.parent.name}_{p.name}")
    env = {**os.environ, "TORCH_HOME": str(TORCH_CACHE)}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "revsearch", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = run(
        "index",
        str(images),
        "--quiet",
        "--backend",
        "exact",
        "--backbone",
        "mobilenet_v2",
        "--weights",
        "IMAGENET1K_V1",
        "--scales",
        "1,0.707",
        "--qe-n",
        "1",
        "--dba-n",
        "0",
        "--copy-pixels",
        "16",
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(run("info").stdout)
    assert info["retrieval"] == {**RetrievalOptions().to_dict(), "qe_n": 1, "dba_n": 0, "copy_pixels": 16}
    assert info["extractor"]["scales"] == [1.0, 0.707]
    target = sorted(images.glob("*.jpg"))[3]
    small = cv2.resize(cv2.imread(str(target)), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "small.png"), small)
    done = run("query", str(tmp_path / "small.png"), "-k", "3", "--mode", "copy", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["path"] == str(target)
    bad = run("index", str(images), "--rebuild", "--quiet", "--scales", "1,x")
    assert bad.returncode == 2 and "scales must be" in bad.stderr


def test_brain_backend_applies_query_expansion_from_its_config(pretrained_mobilenet, subset_paths, tmp_path):
    import fiftyone as fo

    from revsearch.fiftyone import tools
    from revsearch.retrieval.query_expansion import expanded_search

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in subset_paths])
    try:
        tools.compute_embeddings(ds, "emb", pretrained_mobilenet)
        plain, _ = tools.build_index(ds, "plain", "kmeans", embeddings_field="emb", n_clusters=2, nprobe=2)
        qe, _ = tools.build_index(ds, "qe", "kmeans", embeddings_field="emb", n_clusters=2, nprobe=2, qe_n=2)
        assert ds.load_brain_results("qe").config.qe_n == 2 and plain.config.qe_n == 0
        ids, vectors = ds.values("id"), np.stack(ds.values("emb"))
        index = ExactIndex(vectors.shape[1])
        index.add(ids, vectors)
        want = expanded_search(index.search, lambda ks: vectors[[ids.index(k) for k in ks]], vectors[3:4], 6, 2, 3.0)
        view = ds.sort_by_similarity(ids[3], k=6, brain_key="qe", dist_field="d")
        assert view.values("id") == [h.key for h in want[0]]
        np.testing.assert_allclose(view.values("d"), [h.distance for h in want[0]], atol=1e-5)
        exact = index.search(vectors[3:4], 6)[0]
        assert ds.sort_by_similarity(ids[3], k=6, brain_key="plain").values("id") == [h.key for h in exact]
    finally:
        ds.delete()
