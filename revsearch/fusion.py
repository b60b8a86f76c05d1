"""Reciprocal-rank fusion (Cormack et al. 2009) of several rankings of the same items.

Used by the copy mode: the CNN ranking (robust to crops, flips, rotations, borders) fused with the
pixel-thumbnail ranking (exact under resizing, JPEG, blur and overlays).
"""

from __future__ import annotations

from collections.abc import Sequence

from .hits import Hit

#: The constant of the original paper; it damps the weight of the very first ranks.
RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K,
                           weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
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
