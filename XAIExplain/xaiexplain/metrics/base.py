"""One shape, one registry: every metric is a class that ``evaluate``, the benchmark, its report and
``xaiexplain metrics`` read.

A metric states its Co-12 property (Nauta et al. 2023), its settings with their
defaults, its cost in passes before it runs, runs on an :class:`Evaluation`
(the model, the input, the method and its map, and the scorers shared by
every metric of the call) and says which flat columns of a summary row it
fills. Adding a metric is one class and one ``register`` call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..core.models import LoadedModel
from ..errors import XAIError
from ..methods.base import Method, checked_value
from ..methods.machinery.scoring import Scorer

NO_PASSES = {"forward": 0, "backward": 0}


@dataclass
class Evaluation:
    """What every metric of one ``evaluate`` call reads; ``x`` (1, C, X, Y, Z) is in model space."""

    model: LoadedModel
    x: torch.Tensor
    method: Method
    params: dict  # the method's parameters, defaults filled in
    target: object  # the target with its class (and region) fixed from the prediction on x
    reference: torch.Tensor  # the model's output on x
    attribution: object = None  # the map in model space
    seed: int = 0
    mask: object = None  # ground truth on the model grid
    spacing: tuple = (1.0, 1.0, 1.0)  # of the model grid, mm
    pair: torch.Tensor | None = None  # an unrelated input (randomisation baseline)
    regions: list | None = None  # region-table rows (id, name, score)
    truth_region: object = None
    info: dict = field(default_factory=dict)  # what the method said about its map
    context: dict | None = None  # what attribute() needs beyond the input (regions, references)
    scorers: dict = field(default_factory=dict)  # one per output, shared: passes are counted per metric

    @property
    def n_classes(self) -> int:
        return int(self.reference.shape[1])

    def scorer(self, output: str = "logit") -> Scorer:
        if output not in self.scorers:
            self.scorers[output] = Scorer.for_model(self.model, self.x, self.target, output=output)
        return self.scorers[output]

    def common(self) -> dict:
        """The keyword arguments of the metrics that recompute maps."""
        return dict(target=self.target, attribution=self.attribution, params=self.params, seed=self.seed,
                    context=self.context)

    def scored_passes(self) -> dict:
        """Forward passes of every scorer so far (a metric's own: the difference before and after it)."""
        return {output: scorer.passes for output, scorer in self.scorers.items()}


def _nested(value: dict, key: str):
    for part in key.split("."):
        value = value[part]
    return value


class Metric:
    """Base class. Subclasses set the class attributes and implement ``run`` (and ``cost`` if it has one)."""

    name: ClassVar[str]
    title: ClassVar[str]
    co12: ClassVar[str]  # the Co-12 property measured: correctness, completeness, consistency, ...
    defaults: ClassVar[dict] = {}
    bounds: ClassVar[dict] = {}  # setting -> (low, high), choices or BASELINE, as a method declares its parameters
    cost_text: ClassVar[str] = "no model passes"  # the stated cost in words, for listings
    reference: ClassVar[str] = ""
    # Summary-row column -> key in the metric's record ('a.b' reads nested values); NaN where absent.
    columns: ClassVar[dict] = {}
    # Report column -> (heading, digits) for the benchmark report's headline table.
    headline: ClassVar[dict] = {}

    def settings(self, given: dict | None) -> dict:
        given = dict(given or {})
        bad = set(given) - set(self.defaults)
        if bad:
            raise XAIError(f"metric '{self.name}' has no setting {', '.join(sorted(bad))}",
                           f"its settings are: {', '.join(self.defaults) or 'none'}")
        return {**self.defaults, **{key: checked_value(f"{self.name}.{key}", value, self.defaults[key],
                                                        self.bounds.get(key)) for key, value in given.items()}}

    def cost(self, setting: dict, method: Method, params: dict, *, x, model, n_classes: int) -> dict:
        """Passes the metric will use, in volumes, stated before it runs ({'forward': f, 'backward': b})."""
        return dict(NO_PASSES)

    def run(self, ev: Evaluation, setting: dict) -> dict:
        """The metric's record; a 'passes' entry counts what it spent outside ``ev``'s scorers."""
        raise NotImplementedError

    def summary(self, value: dict | None) -> dict:
        """The flat row values this metric contributes (NaN where it did not run or does not apply)."""
        row = {}
        for column, key in self.columns.items():
            try:
                row[column] = math.nan if value is None else float(_nested(value, key))
            except KeyError:
                row[column] = math.nan
        return row

    def recorded_settings(self, setting: dict) -> dict:
        """The settings as the record keeps them (a substrate volume by its kind, not its voxels)."""
        return {k: v if k != "substrate" or isinstance(v, str) else "reference volume" for k, v in setting.items()}

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "property": self.co12, "settings": dict(self.defaults),
                "cost": self.cost_text, "columns": list(self.columns), "reference": self.reference}


REGISTRY: dict[str, Metric] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Add a metric (registration order = listing, record and summary-row order)."""
    REGISTRY[cls.name] = cls()
    return cls


def get_metric(name: str) -> Metric:
    if name not in REGISTRY:
        raise XAIError(f"unknown metric '{name}'",
                       f"choose from: {', '.join(REGISTRY)} (see: xaiexplain metrics)")
    return REGISTRY[name]


def chosen_metrics(names=None) -> list[Metric]:
    """The metrics named (default: every registered one), refusing unknown names all at once."""
    names = list(REGISTRY) if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise XAIError(f"unknown metric(s) {', '.join(sorted(unknown))}",
                       f"choose from: {', '.join(REGISTRY)} (see: xaiexplain metrics)")
    return [REGISTRY[n] for n in names]


def metric_settings(settings: dict | None) -> dict:
    """Every registered metric's settings: the defaults, overridden by ``{metric: {setting: value}}``."""
    settings = settings or {}
    chosen_metrics(settings)  # refuses settings of unknown metrics
    return {name: metric.settings(settings.get(name)) for name, metric in REGISTRY.items()}


def summary_columns() -> list[str]:
    """The numeric columns of a summary row, in registry order, then the passes."""
    return [c for metric in REGISTRY.values() for c in metric.columns] + ["passes_forward", "passes_backward"]
