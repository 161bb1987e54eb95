"""What every metric shares: the scorer, voxel maps and map similarity.

Scores come from the one pass-counting scorer the perturbation methods use
(``methods.machinery.scoring``, ``Scorer.for_model``). Metrics work in model
space: ``x`` is the (1, C, X, Y, Z) model input and a map is a voxel map
(X, Y, Z) (channel maps are summed, as ``explain()`` does; a perturbation
replaces all channels of a voxel together).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, stats

from ..core.models import LoadedModel, load_model
from ..errors import XAIError
from ..methods.machinery.scoring import Scorer

__all__ = ["Scorer", "loaded", "voxel_map", "descending_order", "spearman", "ssim", "magnitude", "map_similarity",
           "fraction_count", "bootstrap_ci"]


def loaded(model) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, device=None)


def voxel_map(attribution) -> np.ndarray:
    """A float64 copy (X, Y, Z) of a map given as (X, Y, Z), (C, X, Y, Z) or (1, C, X, Y, Z)."""
    if torch.is_tensor(attribution):
        a = attribution.detach().cpu().double().numpy()
    else:
        a = np.array(attribution, np.float64)
    if a.ndim == 5:
        a = a[0]
    if a.ndim == 4:
        a = a.sum(0)
    if a.ndim != 3:
        raise XAIError(f"a map must be 3D (X, Y, Z), possibly with channel axes; got shape {a.shape}",
                       "give the map in model space, e.g. from xaiexplain.attribute")
    return a


def descending_order(a: np.ndarray) -> np.ndarray:
    """Flat voxel indices from the highest value down; ties keep index order (deterministic)."""
    return np.argsort(-a.ravel(), kind="stable")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def ssim(a: np.ndarray, b: np.ndarray, win_size: int = 7, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of two volumes: uniform window, sample covariance,
    borders of half a window left out (the conventions of scikit-image's ``structural_similarity``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = win_size ** a.ndim
    cov_norm = n / (n - 1)
    mean = lambda v: ndimage.uniform_filter(v, size=win_size)
    ua, ub = mean(a), mean(b)
    vaa = cov_norm * (mean(a * a) - ua * ua)
    vbb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    pad = (win_size - 1) // 2
    return float(s[tuple(slice(pad, -pad) for _ in range(a.ndim))].mean())


def magnitude(a: np.ndarray) -> np.ndarray:
    """|a| scaled to a maximum of 1 (all zeros stay zeros): how the sanity checks compare maps."""
    m = np.abs(a)
    top = m.max()
    return m / top if top > 0 else m


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict:
    """Spearman rank correlation of |maps| and SSIM of |maps| scaled to [0, 1]."""
    ma, mb = magnitude(a), magnitude(b)
    return {"spearman_abs": spearman(ma, mb), "ssim_abs": ssim(ma, mb)}


def fraction_count(value, n: int) -> int:
    """A count given as an int, or as a fraction (float < 1) of ``n``."""
    count = int(round(value * n)) if isinstance(value, float) and value < 1 else int(value)
    if not 1 <= count <= n:
        raise XAIError(f"{value} selects {count} of {n} voxels", "choose a fraction in (0, 1) or a count in range")
    return count


def bootstrap_ci(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, n): percentile bootstrap 95% interval of the mean, NaNs left out."""
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (resamples, v.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(low), float(high), int(v.size)
