"""Compactness: how concentrated a map is. No model passes.

Sparseness is the Gini index of |map| (Chalasani et al. 2020), complexity the
entropy of |map| / sum |map| (Bhatt et al. 2020); the mass shares say which
fraction of the voxels holds 50% and 90% of the positive attribution.
"""
from __future__ import annotations

import numpy as np

from .common import voxel_map


def gini(attribution) -> float:
    """Gini index of |map|: 0 when every voxel is equal, towards 1 when one voxel holds everything."""
    a = np.sort(np.abs(voxel_map(attribution)).ravel())
    n, total = a.size, a.sum()
    if total == 0:
        return float("nan")
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * total))


def entropy(attribution) -> dict:
    """Shannon entropy (nats) of p = |map| / sum |map|, and the same divided by log(voxels)."""
    a = np.abs(voxel_map(attribution)).ravel()
    total = a.sum()
    if total == 0:
        return {"entropy": float("nan"), "entropy_normalised": float("nan")}
    p = a[a > 0] / total
    h = float(-(p * np.log(p)).sum())
    return {"entropy": h, "entropy_normalised": h / np.log(a.size)}


def mass_shares(attribution, levels=(0.5, 0.9)) -> dict:
    """For each level q, the smallest fraction of voxels (highest first) holding q of the positive mass."""
    a = np.sort(np.clip(voxel_map(attribution).ravel(), 0, None))[::-1]
    cumulative = np.cumsum(a)
    total = cumulative[-1]
    out = {}
    for q in levels:
        key = f"voxels_for_{int(round(q * 100))}pct_mass"
        out[key] = float("nan") if total == 0 else float((np.searchsorted(cumulative, q * total) + 1) / a.size)
    return out


def compactness(attribution) -> dict:
    return {"gini": gini(attribution), **entropy(attribution), **mass_shares(attribution)}
