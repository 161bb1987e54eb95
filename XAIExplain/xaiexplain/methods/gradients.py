"""Gradient methods: vanilla gradient, gradient x input, SmoothGrad, Integrated Gradients."""
from __future__ import annotations

import numpy as np
import torch

from ..core.baselines import (AUTO, UNIFORM_SEED, BaselineProbe, check_baseline, chosen_baseline, describe_baseline,
                              is_zero, probes, resolve_baseline, uniform_noise)
from ..errors import XAIError
from .base import BASELINE, Context, Method, batched, completeness_error, register


def _repeat_rows(ctx: Context, rows_per_sample: int) -> torch.Tensor:
    return torch.arange(ctx.x.shape[0], device=ctx.x.device).repeat_interleave(rows_per_sample)


class Gradient(Method):
    name, title, family = "gradient", "Vanilla gradient (saliency)", "gradient"
    reference = "Simonyan et al. 2014"

    def run(self, ctx, **_):
        grad, _ = ctx.gradient(ctx.x)
        return grad, {}


class GradientXInput(Method):
    name, title, family = "gradient-x-input", "Gradient x input", "gradient"
    reference = "Shrikumar et al. 2016"

    def run(self, ctx, **_):
        grad, _ = ctx.gradient(ctx.x)
        return grad * ctx.x, {}


def smoothgrad_noise(x: torch.Tensor, samples: int, noise_level: float, seed: int) -> torch.Tensor:
    """The noise SmoothGrad adds: (N*samples, ...) Gaussian, std = noise_level * (max - min) of each input."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).cpu()
    noise = torch.randn((x.shape[0], samples) + tuple(x.shape[1:]), generator=gen)
    noise *= (noise_level * span).view(-1, 1, *([1] * (x.ndim - 1)))
    return noise.flatten(0, 1)


class SmoothGrad(Method):
    name, title, family = "smoothgrad", "SmoothGrad (mean gradient under input noise)", "gradient"
    defaults = {"samples": 25, "noise_level": 0.1, "batch_size": 5}
    bounds = {"samples": (1, None), "noise_level": (0.0, None), "batch_size": (1, None)}
    reference = "Smilkov et al. 2017"

    def cost(self, params):
        return {"forward": params["samples"], "backward": params["samples"]}

    def run(self, ctx, samples, noise_level, batch_size):
        noise = smoothgrad_noise(ctx.x, samples, noise_level, ctx.seed)
        rows = _repeat_rows(ctx, samples)
        total = torch.zeros_like(ctx.x)
        for part in batched(len(rows), batch_size):
            idx = rows[part]
            grad, _ = ctx.gradient(ctx.x[idx] + noise[part].to(ctx.x.device), idx)
            total.index_add_(0, idx, grad)
            ctx.report(part.stop / len(rows), f"SmoothGrad {part.stop}/{len(rows)}")
        return total / samples, {"seed": ctx.seed}


class IntegratedGradients(Method):
    name, title, family = "integrated-gradients", "Integrated Gradients", "gradient"
    # auto: zeros, unless the network is scale-invariant (instance norm), whose path from zeros is flat.
    # baselines > 1 (uniform only): the mean of the maps from that many draws of the noise, seeds UNIFORM_SEED + i
    # (an expectation over baselines, as in Erion et al. 2021): one draw's map still carries that draw's pattern
    defaults = {"steps": 32, "baseline": AUTO, "batch_size": 8, "baselines": 1}
    bounds = {"steps": (1, None), "baseline": BASELINE, "batch_size": (1, None), "baselines": (1, 64)}
    reference = "Sundararajan et al. 2017"
    completeness = True

    def params(self, given):
        params = super().params(given)
        if params["baselines"] > 1 and not (isinstance(params["baseline"], str) and params["baseline"] == "uniform"):
            raise XAIError(f"{self.name}.baselines={params['baselines']} averages draws of a random baseline, and "
                           f"'{describe_baseline(params['baseline'])}' is always the same",
                           f"add --param {self.name}.baseline=uniform, or drop {self.name}.baselines")
        return params

    def completeness_baseline(self, x, params, score=None):
        if params["baselines"] > 1:  # one per draw: the map sums to score(x) minus their mean score
            return torch.cat([uniform_noise(x, draw) for draw in range(params["baselines"])])
        return chosen_baseline(x, params["baseline"], score)

    def completeness_passes(self, params):
        return params["baselines"] + 2 * (isinstance(params["baseline"], str) and params["baseline"] == AUTO)

    def cost(self, params):
        draws = params["baselines"]
        return {"forward": draws * (params["steps"] + 1) + 1 + probes(params["baseline"]),
                "backward": draws * params["steps"]}

    def run(self, ctx, steps, baseline, batch_size, baselines):
        probe = BaselineProbe.of(ctx)
        if baselines > 1:
            bases, chosen = [uniform_noise(ctx.x, draw) for draw in range(baselines)], {
                "baseline": "uniform", "baseline_seeds": [UNIFORM_SEED + draw for draw in range(baselines)]}
        else:
            base, chosen = resolve_baseline(ctx.x, baseline, probe)
            bases = [base]
        attributions = torch.zeros_like(ctx.x)
        base_scores = 0.0
        for draw, base in enumerate(bases):
            attributions += self._path(ctx, base, steps, batch_size, (draw, len(bases))) / len(bases)
            with torch.no_grad():
                base_scores = base_scores + ctx.score(ctx.forward(base)) / len(bases)
        with torch.no_grad():
            scores = ctx.score(ctx.forward(ctx.x))
        delta = scores - base_scores
        error = completeness_error(attributions.flatten(1).sum(1).cpu(), delta.cpu())
        info = {"completeness_error": float(error.max()), "score_difference": [float(d) for d in delta], **chosen}
        zero = len(bases) == 1 and is_zero(bases[0])
        if zero or probe.measured:  # the probe's pass is spent: record what it measured
            info["halving_score_change"] = [float(c) for c in probe.change()]
        warnings = check_baseline(
            self.name, chosen["baseline"], errors=error, scores=scores, baseline_scores=base_scores,
            zero=zero, probe=probe, parameter=f"{self.name}.baseline",
            completeness_fix=f"raise --param {self.name}.steps (now {steps}), or start nearer the input: "
                             f"--param {self.name}.baseline=blur")
        if warnings:
            info["warnings"] = warnings
        return attributions, info

    @staticmethod
    def _path(ctx, base, steps, batch_size, draw):
        """The path integral from ``base`` to the input (Gauss-Legendre nodes), times the input's difference."""
        nodes, weights = np.polynomial.legendre.leggauss(int(steps))  # Gauss-Legendre on [0, 1]
        alphas = torch.as_tensor((nodes + 1) / 2, dtype=ctx.x.dtype, device=ctx.x.device)
        weights = torch.as_tensor(weights / 2, dtype=ctx.x.dtype, device=ctx.x.device)
        rows = _repeat_rows(ctx, steps)
        step_of_row = torch.arange(steps, device=ctx.x.device).repeat(ctx.x.shape[0])
        total = torch.zeros_like(ctx.x)
        diff = ctx.x - base
        for part in batched(len(rows), batch_size):
            idx, a = rows[part], alphas[step_of_row[part]].view(-1, *([1] * (ctx.x.ndim - 1)))
            grad, _ = ctx.gradient(base[idx] + a * diff[idx], idx)
            total.index_add_(0, idx, grad * weights[step_of_row[part]].view_as(a))
            done = (draw[0] + part.stop / len(rows)) / draw[1]
            ctx.report(done, f"Integrated Gradients {part.stop}/{len(rows)}" +
                       (f", baseline {draw[0] + 1} of {draw[1]}" if draw[1] > 1 else ""))
        return total * diff


register(Gradient, ("saliency", "vanilla-gradient"))
register(GradientXInput, ("gxi", "input-x-gradient"))
register(SmoothGrad)
register(IntegratedGradients, ("ig",))
