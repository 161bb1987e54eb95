"""Layer methods (LRP, DeepLIFT, the CAM family, guided backprop) through a sliding-window inferer.

These methods hook the network's layers for one forward pass, so they run on each window on its own: window
``w`` explains its share of the target, ``s_w = sum_v seed_w(v) f(x_w)(v)`` with ``seed_w`` the score's
gradient with respect to the blended output times the window's blending weight (``core.windows``), and the
window maps are added on the input grid. LRP and DeepLIFT are linear in the relevance they start from, so the
sum is exactly their map of the whole score (it still sums to the score, or to its difference from the
baseline's); for the CAM family it is the sum of each window's own Grad-CAM of its share. Only the windows
that hold part of the target region run. A baseline named by the user ('auto', 'blur', 'mean') is made once
from the whole volume, and each window starts from its part of it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..core.baselines import BaselineProbe, baseline_for, resolve_baseline
from .base import Context, completeness_error


@dataclass
class WindowShare:
    """A window's share of a linear target: the window output weighted by ``seed`` (1, K, X, Y, Z), summed."""

    seed: torch.Tensor
    linear = True

    def resolve(self, output, class_names=None):
        return self

    def score(self, output, reference, rows=None):
        return (output.float() * self.seed).flatten(1).sum(1)

    def describe(self, reference, class_names=None) -> dict:
        return {"kind": "window share"}


def run_per_window(method, ctx: Context, params: dict) -> tuple[torch.Tensor, dict]:
    """``method`` run on every window that holds part of ``ctx``'s target; its maps added on the input grid."""
    windows = ctx.model.windows
    params, chosen = dict(params), {}
    if "baseline" in params:  # made once from the whole scan, one per sample, then cut per window
        if torch.is_tensor(params["baseline"]):
            params["baseline"] = baseline_for(ctx.x, params["baseline"])
        else:
            params["baseline"], chosen = resolve_baseline(ctx.x, params["baseline"], BaselineProbe.of(ctx))
    plain = dataclasses.replace(ctx.model, inferer=None)  # the network itself, on one window
    references = None if ctx.references is None else (  # DeepSHAP's, padded once for every window
        windows.layout(ctx.x[:1]).padded_input(ctx.references, windows.spec))
    maps, infos, deltas, touched_counts = None, [], [], []
    for n in range(ctx.x.shape[0]):
        layout, weights, touched = windows.weights(ctx.x[n:n + 1], ctx.output_gradient(), n)
        touched_counts.append(len(touched))
        padded = layout.padded_input(ctx.x[n:n + 1], windows.spec)
        base = params.get("baseline")
        base = layout.padded_input(base[n:n + 1], windows.spec) if torch.is_tensor(base) else None
        blended = layout.padded_map(ctx.reference[n:n + 1])
        total, delta = None, 0.0
        for count, i in enumerate(touched):
            span = layout.span(i)
            share = WindowShare(weights[span] * layout.importance)
            # the reference a window's method reads (predicted classes, checks): the blended output there
            sub = Context(plain, padded[span].contiguous(), share, blended[span], layer=ctx.layer, seed=ctx.seed,
                          cancel=ctx.cancel, references=None if references is None else references[span].contiguous())
            window_params = params if base is None else {**params, "baseline": base[span].contiguous()}
            part, info = method.run(sub, **window_params)
            windows.computed += sub.passes["forward"]  # the window's own passes
            for kind in ("forward", "backward"):
                ctx.passes[kind] += sub.passes[kind]
            if total is None:
                total = torch.zeros((1, part.shape[1], *layout.padded), dtype=part.dtype, device=part.device)
            total[span] += part
            delta += _delta(info)
            infos.append(info)
            ctx.report((n + (count + 1) / len(touched)) / ctx.x.shape[0],
                       f"{method.name}: window {count + 1} of {len(touched)} on the target")
        folded = layout.fold(total, windows.spec)
        maps = folded if maps is None else torch.cat([maps, folded])
        deltas.append(delta)
    return maps, _summary(method, ctx, maps, infos, deltas, touched_counts, chosen)


def _delta(info: dict) -> float:
    """What a window's map should sum to, from its info (the score, or its difference from the baseline's)."""
    for key in ("score_difference", "score"):
        if key in info:
            return float(sum(info[key]))
    return float("nan")


def _summary(method, ctx, maps, infos, deltas, touched, chosen) -> dict:
    """The first window's facts that hold for every window (its layer, rules, axes check), with the totals made
    over all of them."""
    per_window = ("score_difference", "score", "relevance_sum", "absorbed_share", "absorbed_by",
                  "completeness_error", "conservation_error", "warnings", "halving_score_change",
                  "reference_score_own_statistics", "completeness_error_own_statistics")
    info = {k: v for k, v in infos[0].items() if k not in per_window}
    info.update(chosen)
    sums = maps.flatten(1).sum(1).double().cpu()
    if all(d == d for d in deltas):  # every window said what its map sums to
        info["completeness_error"] = float(completeness_error(sums, deltas).max())
        info["score_difference" if "score_difference" in infos[0] else "score"] = deltas
    warnings = {w["code"]: w for i in infos for w in i.get("warnings", [])}  # each kind said once
    if warnings:
        info["warnings"] = list(warnings.values())
    info["sliding_window"] = {"windows_on_target": touched,  # the settings are added by attribute()
                              "how": "each window explains its share of the target; the window maps are added"}
    return info
