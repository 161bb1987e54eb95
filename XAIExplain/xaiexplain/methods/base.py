"""One call signature, one registry: every method maps a :class:`Context` to model-space maps.

A method's ``run(ctx, **params)`` returns ``(maps, info)``: ``maps`` is
``(N, C, X, Y, Z)`` on the model's input grid (C = input channels, or 1 for
layer maps), ``info`` a dict of facts worth recording (layer used, checks).
Capability flags let the front ends filter and estimate cost before a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch

from ..core.baselines import BASELINES
from ..core.models import LoadedModel, model_output
from ..core.targets import output_gradient
from ..errors import XAIError

ProgressFn = Callable[[float, str], None]
BASELINE = "baseline"  # a bound: a baseline name or a reference volume


class Cancelled(Exception):
    """Raised between batches when the caller's cancel flag is set."""


@dataclass
class Context:
    """Everything a method needs: the model, the model-space input, the (resolved) target."""

    model: LoadedModel
    x: torch.Tensor  # (N, C, X, Y, Z), on the model's device
    target: object  # a resolved target from .targets
    reference: torch.Tensor  # model output at x, detached: fixes predicted classes / masks
    layer: str | None = None
    seed: int = 0
    progress: ProgressFn | None = None
    cancel: Callable[[], bool] | None = None
    regions: torch.Tensor | None = None  # (X, Y, Z) integer labels in model space, 0 = background
    passes: dict = field(default_factory=lambda: {"forward": 0, "backward": 0})
    references: torch.Tensor | None = None  # (R, C, X, Y, Z) reference volumes in model space, if given
    cache: dict = field(default_factory=dict)  # built once per call, e.g. the perturbation methods' fast network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes["forward"] += int(x.shape[0])  # counted in volumes, not batches
        if self.model.inferer is not None:  # every window, blended: without autograd (see gradient)
            return self.model.windows.forward(x)
        return model_output(self.model.network(x))

    def output_gradient(self) -> torch.Tensor:
        """d score / d output (N, K, X, Y, Z) per sample (``core.targets.output_gradient``), made once."""
        if "output_gradient" not in self.cache:
            self.cache["output_gradient"] = output_gradient(self.target, self.reference)
        return self.cache["output_gradient"]

    def score(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Target score per row; ``rows`` maps each row of ``output`` to its original sample."""
        return self.target.score(output, self.reference, rows)

    def gradient(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d score / d x, score) for a batch of inputs; through sliding windows one window's graph at a time."""
        if self.model.inferer is not None:
            rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
            grad, scores = self.model.windows.gradient(x, self.output_gradient(), rows)
            self.passes["forward"] += int(x.shape[0])
            self.passes["backward"] += int(x.shape[0])
            return grad, scores.to(x.dtype)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            scores = self.score(self.forward(x), rows)
            (grad,) = torch.autograd.grad(scores.sum(), x)
        self.passes["backward"] += int(x.shape[0])
        return grad, scores.detach()

    def report(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled()
        if self.progress is not None:
            self.progress(fraction, message)


class Method:
    """Base class. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    title: ClassVar[str]
    family: ClassVar[str]  # gradient | backprop | cam | propagation
    # post-hoc: explains the trained network from outside; ad-hoc: reads what it computes itself (attention,
    # features, probabilities)
    kind: ClassVar[str] = "post-hoc"
    signed: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    needs_layers: ClassVar[bool] = False
    segmentation: ClassVar[bool] = True  # works with region targets
    classification: ClassVar[bool] = True  # explains a classifier's class score (not: maps of voxelwise outputs)
    min_channels: ClassVar[int] = 1  # input channels it needs (channel-shapley: 2)
    needs_regions: ClassVar[bool] = False  # scores anatomical regions (ctx.regions)
    # Its maps of the sliding windows' shares add up to the map of the whole (attention and activations do not)
    through_windows: ClassVar[bool] = True
    defaults: ClassVar[dict] = {}
    # What each parameter may be: (low, high) for numbers (None: open), a tuple of choices for names,
    # BASELINE for "auto | zeros | mean | blur | a reference volume". Read by the CLI, the API and the Slicer panel.
    bounds: ClassVar[dict] = {}
    reference: ClassVar[str] = ""
    # Completeness axiom: the map sums to score(x) - score(completeness_baseline(x)) (score 0 when None).
    completeness: ClassVar[bool] = False

    def params(self, given: dict | None) -> dict:
        """The parameters to run with: the defaults, overridden by ``given``, each checked against its declaration."""
        given = dict(given or {})
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise XAIError(f"method '{self.name}' has no parameter {', '.join(sorted(unknown))}",
                           f"its parameters are: {', '.join(self.defaults)}" if self.defaults
                           else "it takes none: drop them")
        return {**self.defaults, **{name: self._checked(name, value) for name, value in given.items()}}

    def _checked(self, name: str, value):
        return checked_value(f"{self.name}.{name}", value, self.defaults[name], self.bounds.get(name))

    def cost(self, params: dict) -> dict:
        """Passes per input volume: {'forward': n, 'backward': m}."""
        return {"forward": 1, "backward": 1}

    def time_factor(self, model, device: torch.device) -> float:
        """Time per declared pass relative to a plain pass of its kind, where a method's passes cost more or
        less than that (measured: ``benchmarks/bench_estimates.py``)."""
        return 1.0

    def estimate(self, params: dict, shape: tuple[int, ...], n_regions: int = 0) -> dict:
        """Passes per input volume of this ``shape`` (X, Y, Z) with ``n_regions`` regions."""
        return self.cost(params)

    def run(self, ctx: Context, **params) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def completeness_baseline(self, x: torch.Tensor, params: dict, score=None) -> torch.Tensor | None:
        """The input whose score the map's sum is measured from; None: a score of 0 (e.g. LRP-epsilon).

        ``score``: the target scores of a batch, for a baseline the method chooses by probing the network
        (baseline 'auto'), which then raises without it."""
        return None

    def completeness_passes(self, params: dict) -> int:
        """Forward passes that scoring ``completeness_baseline`` costs (the probe's included)."""
        return 0

    def parameters(self) -> list[dict]:
        """Each parameter as {name, type, default, min, max, choices}: what a front end needs to offer it."""
        out = []
        for name, default in self.defaults.items():
            bound = self.bounds.get(name)
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(default), "object")
            if bound is BASELINE:
                kind = "baseline"
            elif kind == "object" and isinstance(bound, tuple) and len(bound) == 2 and not isinstance(bound[0], str):
                kind = "int"  # an optional count (None: chosen by the method)
            entry = {"name": name, "type": kind, "default": default, "min": None, "max": None, "choices": None}
            if bound is BASELINE:
                entry["choices"] = list(BASELINES)
            elif isinstance(bound, tuple) and bound and isinstance(bound[0], str):
                entry["choices"] = list(bound)
            elif isinstance(bound, tuple):
                entry["min"], entry["max"] = bound
            out.append(entry)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "kind": self.kind, "family": self.family, "signed": self.signed,
                "needs_gradients": self.needs_gradients, "needs_layers": self.needs_layers,
                "segmentation": self.segmentation, "classification": self.classification,
                "completeness": self.completeness, "through_windows": self.through_windows,
                "needs_regions": self.needs_regions, "defaults": dict(self.defaults),
                "parameters": self.parameters(), "cost": self.cost(self.params({})),
                "reference": self.reference}


def checked_value(name: str, value, default, bound):
    """``value`` of the parameter or setting ``name`` if its type and range are what its owner declares (the
    type of its ``default``, and ``bound``: (low, high) with None for open, a tuple of choices, or BASELINE);
    else a clear error naming it, the value and what is allowed. Methods and metrics both declare so."""
    where = f"{name}={value!r}"
    if bound is BASELINE or not (isinstance(bound, tuple) or isinstance(default, (bool, int, float))):
        return value  # a baseline (a name, file or volume: checked where it is read) or an object (rules)
    if isinstance(bound, tuple) and bound and isinstance(bound[0], str):
        if value not in bound:
            raise XAIError(f"{where} is not a choice", f"choose one of: {', '.join(bound)}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise XAIError(f"{where} is not true or false", "give true or false")
        return value
    if value is None and default is None:
        return None  # chosen by the method (e.g. a batch size fitted to memory)
    whole = isinstance(default, int) or default is None  # None: an optional count
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not np.isfinite(value) or (whole and float(value) != int(value)):
        kind = "a whole number" if whole else "a number"
        raise XAIError(f"{where} is not {kind}", f"give {kind} {_range_text(bound)}".rstrip())
    value = int(value) if whole else float(value)
    low, high = bound if isinstance(bound, tuple) else (None, None)
    if (low is not None and value < low) or (high is not None and value > high):
        raise XAIError(f"{where} is out of range", f"give a value {_range_text(bound)}")
    return value


def _range_text(bound) -> str:
    low, high = bound if isinstance(bound, tuple) and len(bound) == 2 else (None, None)
    if low is not None and high is not None:
        return f"from {low} to {high}"
    return f"of {low} or more" if low is not None else f"of {high} or less" if high is not None else ""


def forward_equivalents(cost: dict) -> int:
    """A cost ({'forward': f, 'backward': b}) in forward passes (a backward pass costs about two): what time
    estimates multiply by the measured forward time, and what decides whether a run is quick."""
    return int(cost["forward"]) + 2 * int(cost["backward"])


def completeness_error(sums, deltas) -> np.ndarray:
    """The completeness axiom's relative error per sample: |sum of the map - delta| / |delta|, where delta is
    score(x) - score(baseline) (the score itself for methods measured from a score of 0). One definition
    for every method that has the property (IG, LRP, DeepLIFT, DeepSHAP, KernelSHAP) and for the metric."""
    sums = np.asarray(sums, np.float64).reshape(-1)
    deltas = np.asarray(deltas, np.float64).reshape(-1)
    return np.abs(sums - deltas) / np.maximum(np.abs(deltas), 1e-12)


REGISTRY: dict[str, Method] = {}
ALIASES: dict[str, str] = {}


def register(cls: type[Method], aliases: tuple[str, ...] = ()) -> type[Method]:
    REGISTRY[cls.name] = cls()
    for alias in aliases:
        ALIASES[alias] = cls.name
    return cls


def get_method(name: str) -> Method:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise XAIError(f"unknown method '{name}'", f"choose one of: {', '.join(REGISTRY)} (see: xaiexplain methods)")
    return REGISTRY[key]


def batched(n: int, batch_size: int):
    """Slices covering range(n) in steps of ``batch_size``."""
    batch_size = max(1, int(batch_size))
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))
