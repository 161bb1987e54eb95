"""Every metric on one map: the Co-12 properties measured in 3D, each with its cost in passes.

``evaluate(model, x, method, ...)`` computes the map (or takes it), then runs
the chosen registered metrics (``metrics.REGISTRY``) and returns one
JSON-ready record: values, the parameters and seed of every metric, the passes
each metric stated beforehand and the passes it used, and software versions.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..core.attribute import attribute
from ..core.provenance import versions
from ..core.result import _jsonable
from ..errors import XAIError
from ..methods import get_method
from .base import REGISTRY, Evaluation, chosen_metrics, metric_settings
from .common import loaded
from .robustness import fixed_target


def evaluate(model, x: torch.Tensor, method, *, target=None, attribution=None, params: dict | None = None,
             seed: int = 0, metrics=None, settings: dict | None = None, mask=None, spacing=(1.0, 1.0, 1.0),
             pair: torch.Tensor | None = None, regions=None, truth_region=None, context: dict | None = None,
             progress=None) -> dict:
    """Evaluate one map of ``method`` for ``model`` on the model-space input ``x`` (1, C, X, Y, Z).

    ``attribution``: the map in model space (computed here when None). ``metrics``: names from
    ``REGISTRY`` (default all). ``settings``: ``{metric: {setting: value}}`` over each metric's
    ``defaults``; a substrate may be a model-space volume (e.g. a counterfactual). ``mask``: ground
    truth on the model grid, ``spacing`` its voxel size in mm (coherence). ``pair``: an unrelated input
    for the randomisation baseline. ``regions`` (rows id/name/score) and ``truth_region``: hit@1/hit@3;
    a method that returns a region table in its info is scored from it. ``context``: what
    ``attribute()`` needs beyond the input, for every map computed here: ``regions`` (model-space
    labels, for region methods) and ``references`` (for DeepSHAP).
    """
    model = loaded(model)
    if x.ndim != 5 or x.shape[0] != 1:
        raise XAIError(f"evaluate takes one volume (1, C, X, Y, Z); got shape {tuple(x.shape)}",
                       "evaluate the cases one at a time")
    x = x.to(model.device)
    method = get_method(method) if isinstance(method, str) else method
    chosen = method.params(params)
    selected = chosen_metrics(metrics or None)
    setting = metric_settings(settings)
    fixed, reference = fixed_target(model, x, target)
    record = {"method": method.name, "params": chosen, "seed": seed, "versions": versions(), "metrics": {}}
    info = {}
    if attribution is None:
        start = time.perf_counter()
        maps, info, ctx = attribute(model, x, method, target=fixed, params=chosen, seed=seed, reference=reference,
                                    **(context or {}))
        attribution = maps
        record["map"] = {"passes": dict(ctx.passes), "seconds": time.perf_counter() - start}
    attribution = attribution.detach().clone() if torch.is_tensor(attribution) else np.array(attribution)
    ev = Evaluation(model, x, method, chosen, fixed, reference, attribution, seed=seed, mask=mask, spacing=spacing,
                    pair=pair, regions=regions, truth_region=truth_region, info=info, context=context)
    for number, metric in enumerate(selected):
        if progress is not None:
            progress(number / len(selected), f"{method.name}: {metric.name}")
        s = setting[metric.name]
        stated = metric.cost(s, method, chosen, x=x, model=model, n_classes=ev.n_classes)
        before = ev.scored_passes()
        start = time.perf_counter()
        value = metric.run(ev, s)
        passes = value.pop("passes", None)
        if passes is None:  # a metric that only scores inputs: what it asked of the shared scorers
            passes = {"forward": sum(n - before.get(k, 0) for k, n in ev.scored_passes().items()), "backward": 0}
        value.update(property=metric.co12, passes=passes, stated_passes=stated,
                     seconds=round(time.perf_counter() - start, 4), settings=metric.recorded_settings(s))
        record["metrics"][metric.name] = value
    if progress is not None:
        progress(1.0, f"{method.name}: done")
    return _jsonable(record)


def summary_row(record: dict) -> dict:
    """The headline numbers of an ``evaluate`` record as one flat row (NaN where a metric did not run):
    each registered metric's columns in registry order, then the passes."""
    m = record["metrics"]
    row = {"method": record["method"]}
    for name, metric in REGISTRY.items():
        row.update(metric.summary(m.get(name)))
    row["passes_forward"] = sum(v["passes"]["forward"] for v in m.values())
    row["passes_backward"] = sum(v["passes"]["backward"] for v in m.values())
    return row


def evaluate_volumes(model, inputs, methods, *, target=None, mask=None, substrate=None, metrics=None,
                     params: dict | None = None, settings: dict | None = None, seed: int = 0, device="auto",
                     progress=None) -> list[dict]:
    """``evaluate`` from files or Volumes: the inputs, ground-truth mask and substrate volume are moved
    into the model's space through the prepared case (the mask by nearest neighbour)."""
    from ..core.case import prepare_case
    from ..core.models import load_model
    from ..core.volume import VOLUME_SUFFIXES, Volume, read_volume

    case = prepare_case(load_model(model, device=device), inputs)
    as_volume = lambda v: v if isinstance(v, Volume) else read_volume(v)  # noqa: E731
    mask_model = None if mask is None else case.mask_to_model(as_volume(mask))
    settings = {k: dict(v) for k, v in (settings or {}).items()}
    if substrate is not None:
        if isinstance(substrate, str) and substrate not in ("blur", "constant") and not substrate.lower().endswith(
                VOLUME_SUFFIXES):
            raise XAIError(f"unknown substrate '{substrate}'", "use blur, constant, or a volume file on the input grid")
        if not (isinstance(substrate, str) and substrate in ("blur", "constant")):
            substrate = case.to_model(as_volume(substrate))
        for curve in ("deletion", "insertion"):
            settings[curve] = {**settings.get(curve, {}), "substrate": substrate}
    params = {get_method(k).name: v for k, v in (params or {}).items()}
    records = []
    for name in ([methods] if isinstance(methods, str) else methods):
        records.append(evaluate(case.model, case.x, name, target=target, params=params.get(get_method(name).name),
                                seed=seed, metrics=metrics, settings=settings, mask=mask_model,
                                spacing=case.spacing_model(), progress=progress))
    return records
