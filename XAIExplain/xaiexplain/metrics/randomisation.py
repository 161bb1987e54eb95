"""Model parameter randomisation test (Adebayo et al. 2018), cascading from the top layer down.

A map that survives the destruction of the weights it is meant to explain
describes the input, not the model. Each step re-initialises one more group of
layers (output side first), recomputes the map and compares it with the
original: Spearman correlation of |map| and SSIM of |map| scaled to [0, 1].
The random-pair baseline is the same comparison between the original map and
the map of an unrelated input (another case; by default the input rolled by
half the field of view along every axis) with the original model: how similar
two maps are when they explain different things. The cascade sensitivity,
1 - the mean SSIM over the steps, says how early in the cascade the map gives
way (guided backprop, which ignores the upper layers, keeps it near 0).
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from ..core.attribute import attribute
from ..methods import get_method
from .common import loaded, map_similarity, voxel_map
from .robustness import fixed_target

# Verdict of the randomisation test: after the whole network is re-initialised, the map may be no
# more similar to the original (Spearman of |map|) than the map of an unrelated input is, plus this.
RANDOMISATION_MARGIN = 0.1


def layer_groups(network: torch.nn.Module, depth: int | None = 2) -> list[tuple[str, list[str]]]:
    """Modules with parameters to re-initialise, top (output) first, grouped by the first ``depth``
    parts of their names (``depth=None``: every module is its own step, as in Quantus' MPRT)."""
    names = [name for name, module in network.named_modules() if name and hasattr(module, "reset_parameters")]
    groups: dict[str, list[str]] = {}
    for name in reversed(names):
        key = name if depth is None else ".".join(name.split(".")[:depth])
        groups.setdefault(key, []).append(name)
    return list(groups.items())


def randomise(network: torch.nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the named modules in place, each from ``seed`` (global RNG state left untouched)."""
    modules = dict(network.named_modules())
    device = next(network.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for name in names:
            torch.manual_seed(seed)
            modules[name].reset_parameters()


def model_randomisation(model, x: torch.Tensor, method, *, target=None, attribution=None, params: dict | None = None,
                        seed: int = 0, depth: int | None = 2, pair: torch.Tensor | None = None, context=None,
                        cancel=None) -> dict:
    """Cascading randomisation; costs (groups + 1) x the method's passes (+1 map if none is given).
    ``cancel``: a flag checked between the maps' batches."""
    model = loaded(model)
    method = get_method(method) if isinstance(method, str) else method
    target, reference = fixed_target(model, x, target)
    passes = {"forward": 0, "backward": 0}

    def explain_with(m, inputs):
        maps, _, ctx = attribute(m, inputs, method, target=target, params=params, seed=seed, reference=reference,
                                 cancel=cancel, **(context or {}))
        for key in passes:
            passes[key] += ctx.passes[key]
        return voxel_map(maps)

    pair_kind = "given" if pair is not None else "rolled input"
    original = voxel_map(attribution) if attribution is not None else explain_with(model, x)
    if pair is None:
        pair = torch.roll(x, shifts=[s // 2 for s in x.shape[2:]], dims=list(range(2, x.ndim)))
    baseline = map_similarity(original, explain_with(model, pair.to(x.device)))
    network = copy.deepcopy(model.network)
    randomised = dataclasses.replace(model, network=network)
    steps = []
    for name, members in layer_groups(network, depth):
        randomise(network, members, seed)
        steps.append({"randomised": name, **map_similarity(original, explain_with(randomised, x))})
    final = steps[-1] if steps else {"spearman_abs": float("nan"), "ssim_abs": float("nan")}
    sensitivity = 1.0 - sum(step["ssim_abs"] for step in steps) / max(len(steps), 1)
    return {"steps": steps, "baseline": baseline, "final": {k: final[k] for k in ("spearman_abs", "ssim_abs")},
            "cascade_sensitivity": sensitivity,
            "seed": seed, "depth": depth, "pair": pair_kind, "passes": passes}


def randomisation_verdict(result: dict, margin: float = RANDOMISATION_MARGIN) -> bool:
    """True when the fully randomised model's map is as unlike the original as an unrelated map is."""
    return bool(result["final"]["spearman_abs"] <= result["baseline"]["spearman_abs"] + margin)
