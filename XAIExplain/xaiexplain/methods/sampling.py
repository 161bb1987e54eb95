"""Methods that score many random perturbations: RISE (random masks), LIME and KernelSHAP (over regions).

Randomness comes from generators seeded with ``ctx.seed`` on the CPU, so a run
is repeatable bit for bit on the same machine.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.baselines import baseline_for, describe_baseline
from ..errors import XAIError
from .base import BASELINE, Method, completeness_error, register
from .machinery.perturbation import SCORES, check_score, compose, region_index, region_scores_map
from .machinery.scoring import Scorer


def rise_draws(generator: torch.Generator, count: int, shape, cells: int, keep: float):
    """Every mask's random ``cells``^3 binary grid and shift, drawn up front: the masks then do not
    depend on the batch size, so CPU and GPU runs (different batch sizes) use the same masks."""
    cell = [math.ceil(n / cells) for n in shape]
    grids = (torch.rand((count, 1, cells, cells, cells), generator=generator) < keep).float()
    shifts = torch.stack([torch.randint(0, c, (count,), generator=generator) for c in cell], 1)
    return grids, shifts


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, shape, device) -> torch.Tensor:
    """(B, 1, X, Y, Z) soft masks: the binary grids upsampled (trilinear) and cropped at their shifts."""
    cells = grids.shape[-1]
    cell = [math.ceil(n / cells) for n in shape]
    up = F.interpolate(grids.to(device), size=[(cells + 1) * c for c in cell], mode="trilinear",
                       align_corners=False)
    return torch.stack([up[i, :, s[0]:s[0] + shape[0], s[1]:s[1] + shape[1], s[2]:s[2] + shape[2]]
                        for i, s in enumerate(shifts.tolist())])


class RISE(Method):
    name, title, family = "rise", "RISE (randomised input sampling)", "perturbation"
    needs_gradients, signed = False, False
    # Blur, not the paper's zeros: masking a brain to zeros leaves holes with sharp edges that the demo
    # model reads as lesion-like everywhere (peak 44-52 voxels off the lesion; with blur 0-1 voxel).
    defaults = {"masks": 1000, "cells": 8, "keep": 0.5, "baseline": "blur", "score": "probability",
                "batch_size": None}
    bounds = {"masks": (1, None), "cells": (1, None), "keep": (0.01, 0.99), "baseline": BASELINE, "score": SCORES,
              "batch_size": (1, None)}
    reference = "Petsiuk et al. 2018"

    def cost(self, params):
        return {"forward": params["masks"] + 1, "backward": 0}

    def run(self, ctx, masks, cells, keep, baseline, score, batch_size):
        check_score(score)
        base_all = baseline_for(ctx.x, baseline)
        shape = tuple(ctx.x.shape[2:])
        maps = []
        for n in range(ctx.x.shape[0]):
            grids, shifts = rise_draws(torch.Generator().manual_seed(int(ctx.seed) + n), masks, shape, cells, keep)
            x, base = ctx.x[n:n + 1], base_all[n:n + 1]
            scorer = Scorer(ctx, n, masks, batch_size, "RISE")
            total = torch.zeros(shape, dtype=torch.float64, device=x.device)
            for part in scorer.slices():
                m = rise_masks(grids[part], shifts[part], shape, x.device)
                logits, probs = scorer(x * m + base * (1 - m))
                weights = scorer.pick(logits, probs, score).to(x.device)
                total += torch.einsum("b,bxyz->xyz", weights, m[:, 0].double())
            maps.append((total / (masks * keep)).float()[None, None])
        return torch.cat(maps), {**scorer.facts, "seed": ctx.seed, "cells": cells, "keep": keep,
                                 "baseline": describe_baseline(baseline), "score": score}


def _weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float, float]:
    """Coefficients, intercept and weighted R^2 of ridge regression ``y ~ z`` with sample weights ``w``."""
    mz, my = np.average(z, 0, w), np.average(y, weights=w)
    zc, yc = z - mz, y - my
    a = (zc * w[:, None]).T @ zc + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(a, (zc * w[:, None]).T @ yc)
    residual = yc - zc @ coef
    total = float(np.sum(w * yc ** 2))
    r2 = 1.0 - float(np.sum(w * residual ** 2)) / total if total > 0 else 0.0
    return coef, float(my - mz @ coef), r2


class LIME(Method):
    name, title, family = "lime", "LIME over regions (local linear surrogate)", "perturbation"
    needs_gradients, needs_regions = False, True
    defaults = {"samples": 1000, "kernel_width": 0.25, "alpha": 1.0, "baseline": "blur", "score": "probability",
                "batch_size": None}
    bounds = {"samples": (1, None), "kernel_width": (0.01, None), "alpha": (0.0, None), "baseline": BASELINE,
              "score": SCORES, "batch_size": (1, None)}
    reference = "Ribeiro et al. 2016"

    def cost(self, params):
        return {"forward": params["samples"] + 1, "backward": 0}

    def run(self, ctx, samples, kernel_width, alpha, baseline, score, batch_size):
        check_score(score)
        base_all = baseline_for(ctx.x, baseline)
        compact, ids = region_index(ctx)
        k = len(ids)
        maps, scores, fits = [], [], []
        for n in range(ctx.x.shape[0]):
            rng = np.random.default_rng(int(ctx.seed) + n)
            z = rng.integers(0, 2, (samples, k)).astype(bool)
            z[0] = True  # the unperturbed volume itself
            x, base = ctx.x[n:n + 1], base_all[n:n + 1]
            scorer = Scorer(ctx, n, samples, batch_size, "LIME")
            y = np.zeros(samples)
            keep = torch.as_tensor(z, device=x.device)
            for part in scorer.slices():
                logits, probs = scorer(compose(x, base, compact, keep[part]))
                y[part] = scorer.pick(logits, probs, score).numpy()
            on = z.sum(1)
            cosine = np.where(on > 0, on / np.sqrt(np.maximum(on, 1) * k), 0.0)
            weights = np.sqrt(np.exp(-((1 - cosine) ** 2) / kernel_width ** 2))
            coef, intercept, r2 = _weighted_ridge(z.astype(np.float64), y, weights, alpha)
            maps.append(region_scores_map(compact, coef))
            scores.append({ids[i]: float(coef[i]) for i in range(k)})
            fits.append({"r2": r2, "intercept": intercept})
        return torch.cat(maps), {**scorer.facts, "seed": ctx.seed, "surrogate_r2": fits[0]["r2"], "fits": fits,
                                 "regions_scored": k, "baseline": describe_baseline(baseline), "score": score,
                                 "region_scores": scores}


def shapley_kernel_samples(k: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions (rows of booleans, neither empty nor full) and their regression weights.

    All coalitions with the exact Shapley kernel weights when they fit in ``samples``
    (the regression then gives the exact Shapley values); otherwise sizes drawn from
    the kernel's distribution, each subset paired with its complement, equal weights.
    """
    if k < 2:
        return np.zeros((0, k), bool), np.zeros(0)
    if k <= 20 and 2 ** k - 2 <= samples:
        codes = np.arange(1, 2 ** k - 1)
        z = ((codes[:, None] >> np.arange(k)) & 1).astype(bool)
        s = z.sum(1)
        weights = (k - 1) / (np.array([math.comb(k, int(v)) for v in s]) * s * (k - s))
        return z, weights
    sizes = np.arange(1, k)
    p = (k - 1) / (sizes * (k - sizes))
    pairs = max(1, samples // 2)
    drawn = rng.choice(sizes, size=pairs, p=p / p.sum())
    z = np.zeros((2 * pairs, k), bool)
    for i, s in enumerate(drawn):
        z[2 * i, rng.choice(k, size=s, replace=False)] = True
        z[2 * i + 1] = ~z[2 * i]
    return z, np.ones(len(z))


def constrained_shapley(z: np.ndarray, y: np.ndarray, w: np.ndarray, f0: float, f1: float) -> np.ndarray:
    """Weighted least squares ``y - f0 ~ z . phi`` subject to ``sum(phi) = f1 - f0`` (efficiency)."""
    k = z.shape[1]
    delta = f1 - f0
    if k == 1:
        return np.array([delta])
    zf = z.astype(np.float64)
    target = y - f0 - zf[:, -1] * delta
    design = zf[:, :-1] - zf[:, -1:]
    root = np.sqrt(w)
    phi, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
    return np.append(phi, delta - phi.sum())


class KernelSHAP(Method):
    name, title, family = "kernel-shap", "KernelSHAP over regions (Shapley values)", "perturbation"
    needs_gradients, needs_regions = False, True
    defaults = {"samples": 2048, "baseline": "blur", "score": "probability", "batch_size": None}
    bounds = {"samples": (1, None), "baseline": BASELINE, "score": SCORES, "batch_size": (1, None)}
    reference = "Lundberg & Lee 2017"

    def cost(self, params):
        return {"forward": params["samples"] + 2, "backward": 0}

    def estimate(self, params, shape, n_regions=0):
        exact = 2 ** n_regions - 2 if n_regions <= 20 else math.inf
        return {"forward": int(min(exact, 2 * (params["samples"] // 2))) + 2, "backward": 0}

    def run(self, ctx, samples, baseline, score, batch_size):
        check_score(score)
        base_all = baseline_for(ctx.x, baseline)
        compact, ids = region_index(ctx)
        k = len(ids)
        if k == 0:
            raise XAIError("no region lies inside the model's field of view", "give regions that overlap the volume")
        maps, scores, checks = [], [], []
        for n in range(ctx.x.shape[0]):
            rng = np.random.default_rng(int(ctx.seed) + n)
            z, weights = shapley_kernel_samples(k, samples, rng)
            rows = np.concatenate([np.zeros((1, k), bool), z])  # row 0: every region replaced (the baseline)
            x, base = ctx.x[n:n + 1], base_all[n:n + 1]
            scorer = Scorer(ctx, n, len(rows), batch_size, "KernelSHAP")
            y = np.zeros(len(rows))
            keep = torch.as_tensor(rows, device=x.device)
            for part in scorer.slices():
                logits, probs = scorer(compose(x, base, compact, keep[part]))
                y[part] = scorer.pick(logits, probs, score).numpy()
            f0, f1 = float(y[0]), scorer.reference(score)
            phi = constrained_shapley(z, y[1:], weights, f0, f1)
            error = float(completeness_error(phi.sum(), f1 - f0)[0])  # Shapley efficiency
            maps.append(region_scores_map(compact, phi))
            scores.append({ids[i]: float(phi[i]) for i in range(k)})
            checks.append({"sum_of_values": float(phi.sum()), "f_input": f1, "f_baseline": f0,
                           "completeness_error": error})
        return torch.cat(maps), {**scorer.facts, "seed": ctx.seed, "coalitions": int(len(z)),
                                 "exact": bool(len(z) == 2 ** k - 2), "regions_scored": k,
                                 "completeness_error": max(c["completeness_error"] for c in checks),
                                 "efficiency": checks, "baseline": describe_baseline(baseline), "score": score,
                                 "region_scores": scores}


register(RISE)
register(LIME)
register(KernelSHAP, ("shap", "kernelshap"))
