"""Baselines: what an input becomes when its evidence is taken away, in one place.

Integrated gradients and DeepLIFT start their paths from a baseline, the perturbation
methods put it into occluded voxels, and the deletion/insertion metrics into removed ones.
A baseline is a name ('auto', 'zeros', 'mean', 'blur', 'uniform') or a reference volume: given on
the input's grid, it goes into model space with the case's own preprocessing (see ``core.case``).
'uniform' is noise, uniform between each channel's minimum and maximum, drawn with a fixed seed
(UNIFORM_SEED) so that a run's baseline can be made again from its input: a baseline with no
structure left at all (Sturmfels et al. 2020), where a blurred head is still a head to a network
that has learnt low-frequency context (HD-BET: see the README's real-models section).

A baseline can be one the network cannot see. Instance-normalised networks (deepbet, HD-BET,
nnU-Net) are scale-invariant, f(a x) = f(x) for a > 0: the path a x from zeros is flat, so
integrated gradients explains almost nothing of score(x) - score(0) (completeness error 0.91 on
deepbet at 32 steps). :class:`BaselineProbe` measures that (one forward pass of x / 2), 'auto'
uses it to pick blur where zeros is blind, and :func:`check_baseline` turns what a method measured
into warnings that say what is wrong and the fix.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import XAIError

AUTO = "auto"  # zeros where the network sees it, else blur (a method with a network to probe decides)
BASELINES = (AUTO, "zeros", "mean", "blur", "uniform")
UNIFORM_SEED = 0
COMPLETENESS_TOLERANCE = 0.1  # a relative completeness error above this is warned
INVARIANCE_TOLERANCE = 0.01  # halving the input changes the score by less than this share: scale-invariant
UNINFORMATIVE = 0.01  # score(x) - score(baseline) under this share of |score(x)|: nothing left to explain


def _blur_matrix(n: int, kernel: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of a 1D convolution with ``kernel`` over edge-replicated samples."""
    radius = kernel.numel() // 2
    taps = torch.arange(-radius, radius + 1, device=kernel.device)
    source = (torch.arange(n, device=kernel.device)[:, None] + taps).clamp(0, n - 1)
    return torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device).scatter_add_(
        1, source, kernel.expand(n, -1).contiguous())


def gaussian_blur(x: torch.Tensor, sigma: float = 5.0, radius: int = 15) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, X, Y, Z), edges replicated.

    Each axis is one matrix product with a banded matrix: about 9x faster on a CPU than a
    one-channel convolution, which oneDNN does not optimise (1.5 s -> 0.17 s at 128^3)."""
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = x.flatten(0, 1)
    out = torch.einsum("ij,bjyz->biyz", _blur_matrix(out.shape[1], kernel), out)
    out = torch.einsum("ij,bxjz->bxiz", _blur_matrix(out.shape[2], kernel), out)
    out = torch.einsum("ij,bxyj->bxyi", _blur_matrix(out.shape[3], kernel), out)
    return out.reshape(x.shape)


def baseline_for(x: torch.Tensor, baseline) -> torch.Tensor:
    """'zeros', 'mean' (each channel's mean), 'blur' (Gaussian, sigma 5 voxels) or a tensor/array in model space.

    'auto' here, with no network to probe (perturbation methods), is blur: never blind to a scale-invariant
    network; the gradient and propagation methods resolve it with :func:`resolve_baseline` instead."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "mean":
            return x.flatten(2).mean(2).view(*x.shape[:2], *([1] * (x.ndim - 2))).expand_as(x).clone()
        if baseline in ("blur", AUTO):
            return gaussian_blur(x)
        if baseline == "uniform":
            return uniform_noise(x)
        raise XAIError(f"unknown baseline '{baseline}'",
                       "use auto, zeros, mean, blur, uniform, or pass a reference volume")
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if base.shape != x.shape:
        base = base.expand_as(x) if base.ndim == x.ndim - 1 else base
    if base.shape != x.shape:
        raise XAIError(f"baseline shape {tuple(base.shape)} differs from the input {tuple(x.shape)}",
                       "give a reference volume on the input's grid")
    return base


def uniform_noise(x: torch.Tensor, draw: int = 0) -> torch.Tensor:
    """Noise uniform between each channel's minimum and maximum (per sample), the same for the same input and
    ``draw`` (seed UNIFORM_SEED + draw)."""
    generator = torch.Generator().manual_seed(UNIFORM_SEED + int(draw))
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    flat = x.flatten(2)
    low = flat.amin(2).view(*x.shape[:2], *([1] * (x.ndim - 2)))
    high = flat.amax(2).view(*x.shape[:2], *([1] * (x.ndim - 2)))
    return low + (high - low) * noise


def describe_baseline(kind) -> str:
    """How a baseline is recorded: its name, or the shape of a reference volume."""
    return kind if isinstance(kind, str) else f"reference volume {tuple(torch.as_tensor(kind).shape)}"


def substrate(x: torch.Tensor, kind="blur", value: float = 0.0) -> torch.Tensor:
    """What removed voxels become in the deletion/insertion metrics: a baseline, or 'constant' (``value``)."""
    if isinstance(kind, str) and kind == "constant":
        return torch.full_like(x, float(value))
    if isinstance(kind, str) and kind not in ("blur",):
        raise XAIError(f"unknown substrate '{kind}'", "use blur, constant, or pass a reference volume")
    return baseline_for(x, kind).to(x.dtype)


def is_zero(baseline) -> bool:
    """A zeros baseline, by name or a reference volume of zeros: the end of the path a x, a -> 0."""
    if isinstance(baseline, str):
        return baseline == "zeros"
    return bool(torch.count_nonzero(torch.as_tensor(baseline)) == 0)


def probes(baseline) -> bool:
    """Whether a method spends the probe's forward pass on this baseline: 'auto' to choose, zeros to check."""
    return (isinstance(baseline, str) and baseline == AUTO) or is_zero(baseline)


def _numbers(values) -> np.ndarray:
    values = values.detach().cpu() if torch.is_tensor(values) else values
    return np.asarray(values, np.float64).reshape(-1)


def _percent(share: float) -> str:
    return f"{100 * share:.2g}%"


class BaselineProbe:
    """Is the network scale-invariant at ``x``? f(x / 2) against f(x): one forward pass, made when first asked.

    ``score``: the target score (one per sample) of a batch shaped like ``x``; ``score_x``: the scores of
    ``x`` when already known (else the probe scores ``x`` too)."""

    def __init__(self, x: torch.Tensor, score, score_x=None):
        self.x, self._score = x, score
        self._score_x = None if score_x is None else _numbers(score_x)
        self._change = None

    @classmethod
    def of(cls, ctx) -> BaselineProbe:
        """A method's probe: its pass is counted in ``ctx.passes``; the input's score is the reference output's."""
        return cls(ctx.x, lambda batch: ctx.score(ctx.forward(batch)), ctx.score(ctx.reference))

    @property
    def measured(self) -> bool:
        return self._change is not None

    def change(self) -> np.ndarray:
        """|f(x) - f(x / 2)| / |f(x)| per sample."""
        if self._change is None:
            with torch.no_grad():
                if self._score_x is None:
                    self._score_x = _numbers(self._score(self.x))
                halved = _numbers(self._score(self.x / 2))
            self._change = np.abs(self._score_x - halved) / np.maximum(np.abs(self._score_x), 1e-12)
        return self._change

    def invariant(self) -> bool:
        """Scale-invariant for some sample (then blur is the safe choice for all)."""
        return bool((self.change() <= INVARIANCE_TOLERANCE).any())

    def describe(self) -> str:
        return f"halving the input changed its score by {_percent(float(self.change().min()))}"


def resolve_baseline(x: torch.Tensor, baseline, probe: BaselineProbe) -> tuple[torch.Tensor, dict]:
    """The baseline to start from and what to record: {'baseline': its name} and, for 'auto', the choice and why."""
    if isinstance(baseline, str) and baseline == AUTO:
        blind = probe.invariant()
        why = (f"{probe.describe()}: the network is scale-invariant (e.g. instance norm) and cannot see a zeros "
               "baseline, so blur" if blind else f"{probe.describe()}: the network sees a zeros baseline")
        name = "blur" if blind else "zeros"
        return baseline_for(x, name), {"baseline": name, "baseline_choice": f"auto: {why}"}
    return baseline_for(x, baseline), {"baseline": describe_baseline(baseline)}


def chosen_baseline(x: torch.Tensor, baseline, score=None) -> torch.Tensor:
    """The baseline a method's run from ``baseline`` starts from: 'auto' probes the network through ``score``
    (the target scores of a batch), as the run did."""
    if isinstance(baseline, str) and baseline == AUTO:
        if score is None:
            raise XAIError("the auto baseline is chosen by probing the network",
                           "pass score= (the target scores of a batch), or the baseline the run recorded in its info")
        return resolve_baseline(x, baseline, BaselineProbe(x, score))[0]
    return baseline_for(x, baseline)


def _warning(method: str, code: str, message: str, fix: str) -> dict:
    return {"method": method, "code": code, "message": message, "fix": fix}


def check_baseline(method: str, name: str, *, errors, scores, baseline_scores, zero: bool, probe: BaselineProbe,
                   completeness_fix: str, parameter: str | None = None) -> list[dict]:
    """Warnings ({method, code, message, fix}) about a map measured from a baseline (quoting the worst sample):

    * ``blind-baseline``: a zeros baseline (``zero``) on a scale-invariant network (asks ``probe``);
    * ``completeness``: a completeness error (``errors``, per sample) over COMPLETENESS_TOLERANCE;
    * ``uninformative-baseline``: score(x) - score(baseline) under UNINFORMATIVE of |score(x)|, for any row of
      ``baseline_scores`` (one row per way the baseline was scored).

    ``parameter``: the method parameter that sets the baseline (None: its reference volumes)."""
    errors, scores = _numbers(errors), _numbers(scores)
    worst = float(errors.max())
    use_blur = (f"use --param {parameter}=blur ({AUTO}, the default, picks it on such networks)"
                if parameter else "give reference volumes with contrast, e.g. blurred copies of the input")
    out = []
    if zero and probe.invariant():
        why = f"(it is scale-invariant, e.g. instance norm: {probe.describe()})"
        out.append(_warning(method, "blind-baseline", f"completeness error {worst:.2f} with the {name} baseline: "
                            f"this network cannot see that baseline {why}" if worst > COMPLETENESS_TOLERANCE else
                            f"this network cannot see the {name} baseline {why}, so the map does not explain "
                            "score(input) - score(baseline)", use_blur))
    elif worst > COMPLETENESS_TOLERANCE:
        out.append(_warning(method, "completeness", f"completeness error {worst:.2f} with the {name} baseline: the "
                            "map does not sum to score(input) - score(baseline)", completeness_fix))
    rows = baseline_scores if isinstance(baseline_scores, (list, tuple)) else [baseline_scores]
    for row in map(_numbers, rows):  # tensors on any device, arrays, lists
        share = np.abs(scores - row) / np.maximum(np.abs(scores), 1e-12)
        i = int(np.argmin(share))
        if share[i] <= UNINFORMATIVE:
            other = f"--param {parameter}=blur or a reference volume" if parameter else "other reference volumes"
            out.append(_warning(method, "uninformative-baseline", f"the {name} baseline scores {row[i]:.4g} and the "
                                f"input {scores[i]:.4g} (a difference of {_percent(float(share[i]))}): the baseline "
                                "carries no information, so the map has almost nothing to explain",
                                f"use a baseline the network scores differently: {other} "
                                "(e.g. a healthy counterfactual)"))
            break
    return out
