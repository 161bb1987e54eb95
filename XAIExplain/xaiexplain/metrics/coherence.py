"""Coherence with a ground truth: does the map point where the evidence is? No model passes.

Voxel maps against a mask (lesion, Slicer segment, planted marker) on the same
grid, and ranked region tables against the true region.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import XAIError
from .common import voxel_map


def _mask(mask, shape) -> np.ndarray:
    m = voxel_map(mask) > 0.5  # a copy: bool, 0/1 or (1, X, Y, Z) masks alike
    if m.shape != tuple(shape):
        raise XAIError(f"the mask's shape {m.shape} differs from the map's {tuple(shape)}",
                       "give the mask on the same grid as the map")
    if not m.any():
        raise XAIError("the ground-truth mask is empty", "give a mask with at least one voxel")
    return m


def within(mask: np.ndarray, tolerance_mm: float = 0.0, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The mask grown by ``tolerance_mm`` (Euclidean, in mm on a grid of ``spacing``)."""
    if tolerance_mm <= 0:
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= tolerance_mm


def pointing_game(attribution, mask, tolerance_mm: float = 0.0, spacing=(1.0, 1.0, 1.0)) -> bool:
    """Is a maximum of the map (any, if tied) inside the mask grown by ``tolerance_mm``? (Zhang et al. 2018)"""
    a = voxel_map(attribution)
    region = within(_mask(mask, a.shape), tolerance_mm, spacing)
    return bool(region[a == a.max()].any())


def relevance_mass(attribution, mask) -> float:
    """Share of the positive attribution inside the mask (Arras et al. 2022, positive relevance)."""
    a = np.clip(voxel_map(attribution), 0, None)
    m = _mask(mask, a.shape)
    total = a.sum()
    return float(a[m].sum() / total) if total > 0 else float("nan")


def relevance_rank(attribution, mask) -> float:
    """Of the K highest voxels (K = mask size), the fraction inside the mask (Arras et al. 2022)."""
    a = voxel_map(attribution)
    m = _mask(mask, a.shape).ravel()
    k = int(m.sum())
    top = np.argsort(-a.ravel(), kind="stable")[:k]
    return float(m[top].mean())


def average_precision(attribution, mask) -> float:
    """Average precision of the map as a voxel classifier of the mask (ties form one threshold)."""
    a = voxel_map(attribution)
    m = _mask(mask, a.shape).ravel()
    a = a.ravel()
    order = np.argsort(-a, kind="stable")
    scores, hits = a[order], m[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]  # last index of each distinct score
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / m.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def top_mass_share(attribution, mask, fraction: float = 0.1, tolerance_mm: float = 0.0,
                   spacing=(1.0, 1.0, 1.0)) -> float:
    """Of the highest voxels that together hold ``fraction`` of the positive mass, the share of that
    mass inside the mask grown by ``tolerance_mm`` (the shortcut test: how much of the top
    evidence sits on a planted marker)."""
    a = np.clip(voxel_map(attribution), 0, None)
    region = within(_mask(mask, a.shape), tolerance_mm, spacing).ravel()
    order = np.argsort(-a.ravel(), kind="stable")
    values = a.ravel()[order]
    cumulative = np.cumsum(values)
    if cumulative[-1] == 0:
        return float("nan")
    count = int(np.searchsorted(cumulative, fraction * cumulative[-1])) + 1
    top = order[:count]
    return float(a.ravel()[top][region[top]].sum() / cumulative[count - 1])


def coherence(attribution, mask, tolerance_mm: float = 0.0, spacing=(1.0, 1.0, 1.0)) -> dict:
    return {"pointing_game": float(pointing_game(attribution, mask, tolerance_mm, spacing)),
            "relevance_mass": relevance_mass(attribution, mask), "relevance_rank": relevance_rank(attribution, mask),
            "average_precision": average_precision(attribution, mask), "tolerance_mm": tolerance_mm}


def hit_at_k(rows, truth, k: int = 1) -> bool:
    """Is a true region among the ``k`` highest-scoring rows of a region table?

    ``rows``: dicts with 'id', 'name' and 'score' (any order); ``truth``: an id or name, or a
    set of them. Ties at the k-th score count as inside the top k.
    """
    truths = {truth} if isinstance(truth, (int, str, np.integer)) else set(truth)
    ranked = sorted(rows, key=lambda r: -float(r["score"]))
    if not ranked:
        return False
    cut = float(ranked[min(k, len(ranked)) - 1]["score"])
    return any(r["id"] in truths or r["name"] in truths for r in ranked if float(r["score"]) >= cut)
