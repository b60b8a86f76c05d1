"""Near-duplicate workflow on a revsearch brain index: nearest-neighbour distances, duplicate groups,
one sample kept per group, and exact duplicates by file hash.

Near-duplicates come from the index's range search (``_radius_neighbors``, the same search fob's
``find_duplicates`` uses); a group is a connected set of samples within the threshold of one another.
Edited copies come from the copy mode's fused ranking (CNN + pixel thumbnails, relative distances),
grouped the same way.
"""

from __future__ import annotations

from collections import defaultdict

import fiftyone.core.utils as fou
import numpy as np

from revsearch.fiftyone.brain import RevsearchSimilarityIndex
from revsearch.fiftyone.tools import set_field_info

#: Default threshold on the copy mode's relative distance: measured on Caltech images, 0.2x resizes,
#: heavy blurs and crops of an image score below 0.08, different photos above 0.2.
COPY_THRESHOLD = 0.15
#: Fused neighbours looked at per sample (larger groups still join through their members).
COPY_NEIGHBOURS = 10
#: Field ``info`` key naming the index a distance field was computed with (a form shows it only for it).
SOURCE_INFO = "revsearch_brain_key"


def nearest_neighbour_distances(
    results: RevsearchSimilarityIndex, samples, dist_field: str = "nn_dist", id_field: str = "nn_id"
) -> np.ndarray:
    """Store each sample's nearest other sample (id, distance in the index's metric) of ``samples``; returns the
    distances, whose distribution is what a near-duplicate threshold is chosen from."""
    with results.use_view(samples):
        ids = results.current_sample_ids
        inds, dists = results._kneighbors(k=1, return_dists=True)
    nearest = {str(ids[i]): str(ids[n[0]]) for i, n in enumerate(inds) if len(n)}
    distances = {str(ids[i]): float(d[0]) for i, d in enumerate(dists) if len(d)}
    samples.set_values(dist_field, distances, key_field="id")
    samples.set_values(id_field, nearest, key_field="id")
    set_field_info(samples, dist_field, {SOURCE_INFO: results.key})
    return np.array(list(distances.values()))


def distances_from(samples, field: str, brain_key: str) -> bool:
    """Whether ``field`` holds nearest-neighbour distances computed with index ``brain_key``."""
    field_doc = samples.get_field(field)
    return field_doc is not None and (field_doc.info or {}).get(SOURCE_INFO) == brain_key


def distance_histogram(samples, field: str, bins: int = 40) -> tuple[list[int], list[float]]:
    """Counts and bin edges of ``field``'s values over ``samples`` (computed by the database)."""
    counts, edges, _ = samples.histogram_values(field, bins=bins)
    return list(counts), list(edges)


def grouped_view(samples, group_field: str):
    """The samples that belong to a group, group by group."""
    return samples.exists(group_field).sort_by(group_field)


def _components(n: int, neighbours: list[np.ndarray]) -> np.ndarray:
    """Connected component of each of ``n`` points (union-find over the neighbour lists)."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, row in enumerate(neighbours):
        for j in row:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)])


def _label_groups(samples, members: dict[str, list[str]], group_field: str, drop_tag: str) -> int:
    """Group number per member of a group of 2+ (None for the others), and ``drop_tag`` on all but
    each group's first."""
    groups = [m for m in members.values() if len(m) > 1]
    group_of = {i: g for g, m in enumerate(groups) for i in m}
    samples.set_values(group_field, [group_of.get(i) for i in samples.values("id")])
    drop = [i for m in groups for i in m[1:]]
    samples.untag_samples(drop_tag)
    samples.select(drop).tag_samples(drop_tag)
    return len(groups)


def _group_components(samples, ids: list[str], neighbours: list[np.ndarray], group_field: str, drop_tag: str) -> int:
    """Label the connected components of ``neighbours`` (rows into ``ids``) as groups (see :func:`_label_groups`)."""
    members: dict[str, list[str]] = defaultdict(list)
    for sample_id, component in zip(ids, _components(len(ids), neighbours).tolist()):
        members[ids[component]].append(sample_id)
    return _label_groups(samples, members, group_field, drop_tag)


def near_duplicate_groups(
    results: RevsearchSimilarityIndex,
    samples,
    threshold: float,
    group_field: str = "dup_group",
    drop_tag: str = "duplicate",
) -> int:
    """Group the samples lying within distance ``threshold`` (the index's metric) of one another (transitively);
    tag all but one sample of each group with ``drop_tag``. Returns the number of groups."""
    with results.use_view(samples):
        ids = results.current_sample_ids.tolist()
        neighbours = results._radius_neighbors(thresh=threshold)
    return _group_components(samples, ids, neighbours, group_field, drop_tag)


def copy_duplicate_groups(
    results: RevsearchSimilarityIndex,
    samples,
    threshold: float = COPY_THRESHOLD,
    group_field: str = "copy_group",
    drop_tag: str = "duplicate",
    dist_field: str | None = None,
    id_field: str | None = None,
) -> int:
    """Group the samples that are edited copies of one another: fused relative distance (copy mode)
    at most ``threshold``, transitively; tag all but one sample of each group with ``drop_tag``.
    Each sample's nearest other sample by that distance goes in ``id_field`` / ``dist_field`` if
    given. The index must keep thumbnails (``copy_pixels``). Returns the number of groups."""
    with results.use_view(samples):
        ids = results.current_sample_ids.tolist()
        rows = results.copy_neighbours(COPY_NEIGHBOURS)
    position = {key: i for i, key in enumerate(ids)}
    if dist_field and id_field:
        samples.set_values(dist_field, {i: row[0].distance for i, row in zip(ids, rows) if row}, key_field="id")
        samples.set_values(id_field, {i: row[0].key for i, row in zip(ids, rows) if row}, key_field="id")
        set_field_info(samples, dist_field, {SOURCE_INFO: results.key})
    neighbours = [np.array([position[h.key] for h in row if h.distance <= threshold], dtype=np.int64) for row in rows]
    return _group_components(samples, ids, neighbours, group_field, drop_tag)


def exact_duplicate_groups(samples, group_field: str = "file_dup_group", drop_tag: str = "file_duplicate") -> int:
    """Group samples whose files have the same content hash; tag all but one of each group with
    ``drop_tag``. Unreadable files are left out. Returns the number of groups."""
    members: dict[str, list[str]] = defaultdict(list)
    for sample_id, path in zip(*samples.values(["id", "filepath"])):
        try:
            members[fou.compute_filehash(path)].append(sample_id)
        except OSError:
            continue
    return _label_groups(samples, members, group_field, drop_tag)
