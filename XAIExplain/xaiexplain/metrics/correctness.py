"""Correctness: does the map rank voxels by how much the model needs them?

Deletion / insertion curves (Petsiuk et al. 2018, in 3D), faithfulness
correlation (Bhatt et al. 2020) and the completeness summation error
(Sundararajan et al. 2017). The model parameter randomisation test lives in
``randomisation``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.baselines import substrate
from ..errors import XAIError
from ..methods import get_method
from ..methods.base import batched, completeness_error
from ..methods.machinery.scoring import Scorer
from .common import descending_order, fraction_count, voxel_map


def _auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    return float(np.sum((scores[1:] + scores[:-1]) * np.diff(fractions)) / 2)


def perturbation_curve(scorer: Scorer, attribution, mode: str = "deletion", steps: int = 50, substrate_kind="blur",
                       value: float = 0.0, until: float = 1.0) -> dict:
    """Deletion (x -> substrate) or insertion (substrate -> x) curve, ``steps`` equal voxel fractions
    up to ``until`` (a fraction of the voxels; below 1 for small targets, e.g. a lesion of 0.05%).

    Voxels go in descending order of the map (most positive first). Costs ``steps + 1`` forward
    passes. Returns the fractions, the target score at each, and the area under the curve
    (trapezoid over the fraction of voxels, divided by ``until``: the mean score over the curve).
    """
    if mode not in ("deletion", "insertion"):
        raise XAIError(f"unknown curve '{mode}'", "use deletion or insertion")
    a = voxel_map(attribution)
    x = scorer.x
    if a.shape != tuple(x.shape[2:]):
        raise XAIError(f"the map's shape {a.shape} differs from the model input {tuple(x.shape[2:])}",
                       "give the map in model space")
    fill = substrate(x, substrate_kind, value)
    start, end = (x, fill) if mode == "deletion" else (fill, x)
    n = a.size
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.as_tensor(descending_order(a))] = torch.arange(n)
    rank = rank.view(a.shape).to(x.device)
    if not 0 < until <= 1:
        raise XAIError(f"a curve cannot stop at {until} of the voxels", "choose until in (0, 1]")
    counts = np.round(np.linspace(0, until * n, steps + 1)).astype(np.int64)
    scores = []
    for part in batched(len(counts), scorer.batch_size):
        k = torch.as_tensor(counts[part], device=x.device).view(-1, 1, 1, 1, 1)
        changed = rank[None, None] < k  # (B, 1, X, Y, Z)
        scores.append(scorer.scores(torch.where(changed, end, start)))
    scores = np.concatenate(scores)
    fractions = counts / n
    return {"auc": _auc(fractions, scores) / until, "fractions": fractions.tolist(), "scores": scores.tolist(),
            "substrate": substrate_kind if isinstance(substrate_kind, str) else "reference volume",
            "steps": steps, "until": until, "output": scorer.output}


def faithfulness_correlation(scorer: Scorer, attribution, samples: int = 64, subset=0.01, substrate_kind="constant",
                             value: float = 0.0, seed: int = 0, subsets: np.ndarray | None = None) -> dict:
    """Pearson correlation between the attribution summed over random voxel subsets and the score
    drop when those voxels are replaced by the substrate (Bhatt et al. 2020).

    ``subset``: voxels per subset (count, or fraction of the voxels); ``subsets``: fixed
    (samples, size) flat voxel indices instead of drawing them from ``seed``. Costs
    ``samples`` forward passes (the unperturbed score is the scorer's).
    """
    a = voxel_map(attribution).ravel()
    x = scorer.x
    if subsets is None:
        size = fraction_count(subset, a.size)
        rng = np.random.default_rng(seed)
        subsets = np.stack([rng.choice(a.size, size, replace=False) for _ in range(samples)])
    subsets = np.asarray(subsets, dtype=np.int64)
    fill = substrate(x, substrate_kind, value)
    drops = []
    for part in batched(len(subsets), scorer.batch_size):
        rows = subsets[part]
        masks = torch.zeros((len(rows), a.size), dtype=torch.bool)
        masks[np.repeat(np.arange(len(rows)), rows.shape[1]), rows.ravel()] = True
        masks = masks.view((len(rows), 1) + tuple(x.shape[2:])).to(x.device)
        drops.append(scorer.base - scorer.scores(torch.where(masks, fill, x)))
    drops = np.concatenate(drops)
    sums = a[subsets].sum(1)
    corr = float(np.corrcoef(sums, drops)[0, 1]) if sums.std() > 0 and drops.std() > 0 else float("nan")
    return {"correlation": corr, "samples": int(len(subsets)), "subset_size": int(subsets.shape[1]),
            "substrate": substrate_kind if isinstance(substrate_kind, str) else "reference volume",
            "seed": seed, "output": scorer.output}


def completeness(scorer: Scorer, attribution, method, params: dict | None = None) -> dict:
    """The completeness axiom's relative error (``methods.base.completeness_error``, the one definition the
    methods check themselves against) for methods with the axiom (``Method.completeness``), measured from
    ``Method.completeness_baseline``; ``Method.completeness_passes`` forward passes (the baseline's score, and
    for an 'auto' baseline the probe that chose it). ``scorer`` must score logits."""
    method = get_method(method) if isinstance(method, str) else method
    if not method.completeness:
        return {"applies": False}
    if scorer.output != "logit":
        raise XAIError("completeness is defined on the explained score", "use a logit scorer")
    chosen = method.params(params)
    base = method.completeness_baseline(scorer.x, chosen, score=scorer.scores)  # 'auto' probes the network
    delta = scorer.base - (float(scorer.scores(base).mean()) if base is not None else 0.0)  # one or more baselines
    total = float(voxel_map(attribution).sum())
    return {"applies": True, "sum": total, "score_difference": delta,
            "completeness_error": float(completeness_error([total], [delta])[0])}
