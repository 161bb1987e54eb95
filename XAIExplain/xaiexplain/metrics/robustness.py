"""Consistency, continuity and contrastivity: maps recomputed under controlled changes.

- consistency: the same call twice gives the same map (bit-identical on CPU with the recorded seed);
- continuity: max-sensitivity (Yeh et al. 2019), the largest relative change of the map under
  small uniform input noise, the noisy copies explained in batches;
- contrastivity: target sensitivity, how similar the maps of the other classes are to the target's.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.attribute import attribute
from ..core.targets import ClassTarget, SegmentationTarget
from ..errors import XAIError
from ..methods.base import batched
from .common import loaded, spearman, voxel_map


def fixed_target(model, x: torch.Tensor, target=None):
    """(target with its class and region fixed from the prediction on ``x``, model output on ``x``).

    Recomputed maps (noisy inputs, randomised models) must explain the same score as the original.
    """
    reference = model.output(x)  # through the model's sliding windows, if it has them
    target = target if hasattr(target, "score") else ClassTarget(target)
    target = target.resolve(reference, model.class_names)
    if isinstance(target, ClassTarget) and target.index is None:
        target = ClassTarget(int(reference.argmax(1)[0]))
    if isinstance(target, SegmentationTarget) and target.region is None:
        target = SegmentationTarget(target.index, (reference.argmax(1) == target.index)[0])
    return target, reference


def _maps(model, x, method, target, reference, params, seed, passes, context=None) -> torch.Tensor:
    maps, _, ctx = attribute(model, x, method, target=target, params=params, seed=seed,
                             reference=reference.expand((x.shape[0],) + tuple(reference.shape[1:])), **(context or {}))
    for key in passes:
        passes[key] += ctx.passes[key]
    return maps


def consistency(model, x, method, *, target=None, attribution=None, params=None, seed: int = 0, context=None) -> dict:
    """Recompute the map with the same seed; costs 1 x the method's passes (2 if no map is given)."""
    model = loaded(model)
    target, reference = fixed_target(model, x, target)
    passes = {"forward": 0, "backward": 0}
    first = (voxel_map(attribution) if attribution is not None
             else voxel_map(_maps(model, x, method, target, reference, params, seed, passes, context)))
    second = voxel_map(_maps(model, x, method, target, reference, params, seed, passes, context))
    return {"identical": bool(np.array_equal(first, second)), "max_abs_difference": float(np.abs(first - second).max()),
            "seed": seed, "passes": passes}


def max_sensitivity(model, x, method, *, target=None, attribution=None, params=None, seed: int = 0,
                    samples: int = 8, radius: float = 0.02, batch_size: int = 4, context=None) -> dict:
    """max_i ||map(x + d_i) - map(x)|| / ||map(x)|| (Frobenius), d_i uniform in [-r, r] per voxel with
    r = ``radius`` x (max - min) of ``x``; costs ``samples`` x the method's passes."""
    model = loaded(model)
    target, reference = fixed_target(model, x, target)
    passes = {"forward": 0, "backward": 0}
    original = (voxel_map(attribution) if attribution is not None
                else voxel_map(_maps(model, x, method, target, reference, params, seed, passes, context)))
    norm = float(np.linalg.norm(original))
    if norm == 0:
        raise XAIError("the map is zero everywhere: its sensitivity is undefined", "check the target and method")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    span = float(x.max() - x.min())
    ratios = []
    for part in batched(samples, batch_size):
        noise = (torch.rand((part.stop - part.start,) + tuple(x.shape[1:]), generator=gen) * 2 - 1) * radius * span
        maps = _maps(model, x + noise.to(x.device, x.dtype), method, target, reference, params, seed, passes,
                     context)
        ratios += [float(np.linalg.norm(voxel_map(m) - original)) / norm for m in maps]
    return {"max_sensitivity": max(ratios), "mean_sensitivity": float(np.mean(ratios)), "samples": samples,
            "radius": radius, "seed": seed, "passes": passes}


def target_sensitivity(model, x, method, *, target=None, attribution=None, params=None, seed: int = 0,
                       context=None) -> dict:
    """Similarity between the target's map and each other class's map (classifiers, class targets):
    Pearson of the maps as produced and Spearman of |maps|; the most similar class is reported.
    A method whose maps do not depend on the class scores near 1. Costs (classes - 1) x the method."""
    model = loaded(model)
    target, reference = fixed_target(model, x, target)
    if not isinstance(target, ClassTarget) or reference.ndim != 2 or reference.shape[1] < 2:
        return {"applies": False, "reason": "needs a classifier with two or more classes and a class target"}
    passes = {"forward": 0, "backward": 0}
    original = (voxel_map(attribution) if attribution is not None
                else voxel_map(_maps(model, x, method, target, reference, params, seed, passes, context)))
    others = {}
    for k in range(reference.shape[1]):
        if k != target.index:
            other = voxel_map(_maps(model, x, method, ClassTarget(k), reference, params, seed, passes, context))
            varies = other.std() > 0 and original.std() > 0
            pear = float(np.corrcoef(original.ravel(), other.ravel())[0, 1]) if varies else float("nan")
            others[k] = {"pearson": pear, "spearman_abs": spearman(np.abs(original), np.abs(other))}
    closest = max(others, key=lambda k: others[k]["spearman_abs"])
    return {"applies": True, "classes": others, "closest_class": closest, "pearson": others[closest]["pearson"],
            "spearman_abs": others[closest]["spearman_abs"], "passes": passes}
