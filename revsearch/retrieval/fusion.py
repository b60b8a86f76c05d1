"""Fusion of several rankings of the same items (the copy mode: CNN ranking + pixel-thumbnail ranking)."""

from __future__ import annotations

from collections.abc import Sequence

from revsearch.index.hits import Hit

#: The constant of the original paper; it damps the weight of the very first ranks.
RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Items of the union of ``rankings`` (each best first) by descending ``sum w / (k + rank)``
    (rank from 1; an item missing from a ranking gets nothing from it). Ties keep first-seen order."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def fuse_hits(hit_lists: Sequence[list[Hit]], top: int, k: int = RRF_K) -> list[Hit]:
    """Fuse per-feature hit lists (each nearest first) into ``top`` hits; a hit's ``distance`` is
    ``1 - score / max score`` (0 for the best), as the hit lists' distances are not comparable."""
    fused = reciprocal_rank_fusion([[h.key for h in hits] for hits in hit_lists], k)[:top]
    if not fused:
        return []
    best = fused[0][1]
    return [Hit(key, 1.0 - score / best) for key, score in fused]


def ratio_fusion(
    hit_lists: Sequence[list[Hit]], top: int, ref_rank: int = 5, weights: Sequence[float] | None = None
) -> list[Hit]:
    """Fuse hit lists (each nearest first) by each item's smallest *relative* distance: its distance over
    the list's ``ref_rank``-th distance, times the list's weight; an item a list lacks gets the list's last
    one. Unlike rank fusion this keeps how much closer the best hit is, which is what marks a copy."""
    weights = [1.0] * len(hit_lists) if weights is None else list(weights)
    if len(weights) != len(hit_lists):
        raise ValueError(f"{len(weights)} weights for {len(hit_lists)} hit lists")
    relative: list[dict[str, float]] = []
    bounds: list[float] = []
    for hits, weight in zip(hit_lists, weights):
        if not hits:
            continue
        ref = max(hits[min(ref_rank, len(hits)) - 1].distance, 1e-12) / weight
        relative.append({h.key: h.distance / ref for h in hits})
        bounds.append(hits[-1].distance / ref)
    keys = list(dict.fromkeys(k for rel in relative for k in rel))
    score = {k: min(rel.get(k, bound) for rel, bound in zip(relative, bounds)) for k in keys}
    return [Hit(k, score[k]) for k in sorted(keys, key=lambda k: score[k])[:top]]
