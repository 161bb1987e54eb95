"""Every metric on one map: the Co-12 properties measured in 3D, each with its cost in passes.

``evaluate(model, x, method, ...)`` computes the map (or takes it), then runs
the chosen metrics and returns one JSON-ready record: values, the parameters
and seed of every metric, the passes each metric stated beforehand and the
passes it used, and software versions.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import XAIError
from ..core.explain import attribute
from ..methods import get_method
from ..core.provenance import versions
from ..core.result import _jsonable
from .coherence import coherence, hit_at_k
from .common import Scorer, loaded
from .compactness import compactness
from .correctness import completeness_error, faithfulness_correlation, perturbation_curve
from .randomisation import layer_groups, model_randomisation
from .robustness import consistency, fixed_target, max_sensitivity, target_sensitivity

PROPERTIES = {
    "deletion": "correctness", "insertion": "correctness", "faithfulness_correlation": "correctness",
    "randomisation": "correctness", "completeness": "completeness", "consistency": "consistency",
    "continuity": "continuity", "contrastivity": "contrastivity", "compactness": "compactness",
    "coherence": "coherence",
}
METRICS = tuple(PROPERTIES)
DEFAULTS = {
    "deletion": {"steps": 50, "substrate": "blur", "value": 0.0, "output": "probability", "until": 1.0},
    "insertion": {"steps": 50, "substrate": "blur", "value": 0.0, "output": "probability", "until": 1.0},
    "faithfulness_correlation": {"samples": 64, "subset": 0.01, "substrate": "constant", "value": 0.0,
                                 "output": "logit"},
    "randomisation": {"depth": 2},
    "completeness": {},
    "consistency": {},
    "continuity": {"samples": 8, "radius": 0.02, "batch_size": 4},
    "contrastivity": {},
    "compactness": {},
    "coherence": {"tolerance_mm": 0.0},
}
# Verdict of the randomisation test: after the whole network is re-initialised, the map may be no
# more similar to the original (Spearman of |map|) than the map of an unrelated input is, plus this.
RANDOMISATION_MARGIN = 0.1


def metric_settings(settings: dict | None) -> dict:
    settings = settings or {}
    unknown = set(settings) - set(METRICS)
    if unknown:
        raise XAIError(f"unknown metric(s) {', '.join(sorted(unknown))}", f"choose from: {', '.join(METRICS)}")
    out = {}
    for name in METRICS:
        given = dict(settings.get(name) or {})
        bad = set(given) - set(DEFAULTS[name])
        if bad:
            raise XAIError(f"metric '{name}' has no setting {', '.join(sorted(bad))}",
                           f"its settings are: {', '.join(DEFAULTS[name]) or 'none'}")
        out[name] = {**DEFAULTS[name], **given}
    return out


def stated_cost(metric: str, method, params: dict, setting: dict, *, x: torch.Tensor, model, n_classes: int) -> dict:
    """Passes a metric will use, in volumes, stated before it runs ({'forward': f, 'backward': b})."""
    cost = method.cost(params)
    times = lambda k: {"forward": k * cost["forward"], "backward": k * cost["backward"]}
    if metric in ("deletion", "insertion"):
        return {"forward": setting["steps"] + 1, "backward": 0}
    if metric == "faithfulness_correlation":
        return {"forward": setting["samples"], "backward": 0}
    if metric == "completeness":
        applies = method.completeness and method.completeness_baseline(x, params) is not None
        return {"forward": int(applies), "backward": 0}
    if metric == "randomisation":
        return times(len(layer_groups(model.network, setting["depth"])) + 1)
    if metric == "consistency":
        return times(1)
    if metric == "continuity":
        return times(setting["samples"])
    if metric == "contrastivity":
        return times(max(n_classes - 1, 0))
    return {"forward": 0, "backward": 0}


def randomisation_verdict(result: dict, margin: float = RANDOMISATION_MARGIN) -> bool:
    """True when the fully randomised model's map is as unlike the original as an unrelated map is."""
    return bool(result["final"]["spearman_abs"] <= result["baseline"]["spearman_abs"] + margin)


def _substrate_name(value):
    return value if isinstance(value, str) else "reference volume"


def evaluate(model, x: torch.Tensor, method, *, target=None, attribution=None, params: dict | None = None,
             seed: int = 0, metrics=None, settings: dict | None = None, mask=None, spacing=(1.0, 1.0, 1.0),
             pair: torch.Tensor | None = None, regions=None, truth_region=None, context: dict | None = None,
             progress=None) -> dict:
    """Evaluate one map of ``method`` for ``model`` on the model-space input ``x`` (1, C, X, Y, Z).

    ``attribution``: the map in model space (computed here when None). ``metrics``: names from
    ``METRICS`` (default all). ``settings``: ``{metric: {setting: value}}`` over ``DEFAULTS``; a
    substrate may be a model-space volume (e.g. a counterfactual). ``mask``: ground truth on the
    model grid, ``spacing`` its voxel size in mm (coherence). ``pair``: an unrelated input for the
    randomisation baseline. ``regions`` (rows id/name/score) and ``truth_region``: hit@1/hit@3; a
    method that returns a region table in its info is scored from it. ``context``: what
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
    names = list(metrics or METRICS)
    unknown = set(names) - set(METRICS)
    if unknown:
        raise XAIError(f"unknown metric(s) {', '.join(sorted(unknown))}", f"choose from: {', '.join(METRICS)}")
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
    scorers = {}

    def scorer(output):
        if output not in scorers:
            scorers[output] = Scorer(model, x, fixed, output=output)
        return scorers[output]

    common = dict(target=fixed, attribution=attribution, params=chosen, seed=seed, context=context)
    for number, name in enumerate(names):
        if progress is not None:
            progress(number / len(names), f"{method.name}: {name}")
        s = setting[name]
        stated = stated_cost(name, method, chosen, s, x=x, model=model, n_classes=int(reference.shape[1]))
        before = {k: v.passes for k, v in scorers.items()}
        start = time.perf_counter()
        passes = None
        if name in ("deletion", "insertion"):
            value = perturbation_curve(scorer(s["output"]), attribution, name, s["steps"], s["substrate"], s["value"],
                                       s["until"])
        elif name == "faithfulness_correlation":
            value = faithfulness_correlation(scorer(s["output"]), attribution, s["samples"], s["subset"],
                                             s["substrate"], s["value"], seed)
        elif name == "completeness":
            value = completeness_error(scorer("logit"), attribution, method, chosen)
        elif name == "randomisation":
            value = model_randomisation(model, x, method, depth=s["depth"], pair=pair, **common)
            value["passed"] = randomisation_verdict(value)
            passes = value.pop("passes")
        elif name == "consistency":
            value = consistency(model, x, method, **common)
            passes = value.pop("passes")
        elif name == "continuity":
            value = max_sensitivity(model, x, method, samples=s["samples"], radius=s["radius"],
                                    batch_size=s["batch_size"], **common)
            passes = value.pop("passes")
        elif name == "contrastivity":
            value = target_sensitivity(model, x, method, **common)
            passes = value.pop("passes", {"forward": 0, "backward": 0})
        elif name == "compactness":
            value = compactness(attribution)
        else:
            value = _coherence(attribution, mask, s, spacing, regions or info.get("regions") or _score_rows(info),
                               truth_region)
        if passes is None:
            passes = {"forward": sum(v.passes - before.get(k, 0) for k, v in scorers.items()), "backward": 0}
        value.update(property=PROPERTIES[name], passes=passes, stated_passes=stated,
                     seconds=round(time.perf_counter() - start, 4),
                     settings={k: _substrate_name(v) if k == "substrate" else v for k, v in s.items()})
        record["metrics"][name] = value
    if progress is not None:
        progress(1.0, f"{method.name}: done")
    return _jsonable(record)


def _score_rows(info: dict):
    """Region methods' own scores ({id: score} for the first sample) as region-table rows, for hit@k."""
    scores = info.get("region_scores")
    if not scores:
        return None
    return [{"id": int(i), "name": str(i), "score": float(v)} for i, v in scores[0].items()]


def _coherence(attribution, mask, setting, spacing, regions, truth_region) -> dict:
    out = {"applies": mask is not None or (regions is not None and truth_region is not None)}
    if mask is not None:
        out.update(coherence(attribution, mask, setting["tolerance_mm"], tuple(float(s) for s in spacing)))
    if regions is not None and truth_region is not None:
        out.update(hit_at_1=float(hit_at_k(regions, truth_region, 1)),
                   hit_at_3=float(hit_at_k(regions, truth_region, 3)))
    return out


def summary_row(record: dict) -> dict:
    """The headline numbers of an ``evaluate`` record as one flat row (NaN where a metric did not run)."""
    m = record["metrics"]
    get = lambda metric, key: float(m[metric][key]) if metric in m and key in m[metric] else float("nan")
    row = {"method": record["method"],
           "deletion_auc": get("deletion", "auc"), "insertion_auc": get("insertion", "auc"),
           "faithfulness_correlation": get("faithfulness_correlation", "correlation"),
           "randomisation_spearman": m["randomisation"]["final"]["spearman_abs"] if "randomisation" in m else np.nan,
           "randomisation_ssim": m["randomisation"]["final"]["ssim_abs"] if "randomisation" in m else np.nan,
           "randomisation_baseline": m["randomisation"]["baseline"]["spearman_abs"] if "randomisation" in m else np.nan,
           "cascade_sensitivity": m["randomisation"]["cascade_sensitivity"] if "randomisation" in m else np.nan,
           "randomisation_passed": float(m["randomisation"]["passed"]) if "randomisation" in m else np.nan,
           "completeness_error": get("completeness", "relative_error"),
           "consistent": float(m["consistency"]["identical"]) if "consistency" in m else np.nan,
           "max_sensitivity": get("continuity", "max_sensitivity"),
           "target_similarity": get("contrastivity", "spearman_abs"),
           "gini": get("compactness", "gini"), "entropy_normalised": get("compactness", "entropy_normalised"),
           "voxels_50pct": get("compactness", "voxels_for_50pct_mass"),
           "voxels_90pct": get("compactness", "voxels_for_90pct_mass")}
    for key in ("pointing_game", "relevance_mass", "relevance_rank", "average_precision", "hit_at_1", "hit_at_3"):
        row[key] = get("coherence", key)
    row["passes_forward"] = sum(v["passes"]["forward"] for v in m.values())
    row["passes_backward"] = sum(v["passes"]["backward"] for v in m.values())
    return row


def evaluate_volumes(model, inputs, methods, *, target=None, mask=None, substrate=None, metrics=None,
                     params: dict | None = None, settings: dict | None = None, seed: int = 0, device="auto",
                     progress=None) -> list[dict]:
    """``evaluate`` from files or Volumes: the inputs, ground-truth mask and substrate volume are moved
    into the model's space with its preprocessing (the mask by nearest neighbour)."""
    from ..core.case import check_volume
    from ..core.volume import load_inputs
    from ..core.models import load_model
    from ..core.preprocess import Preprocessor
    from ..core.volume import Volume, read_volume

    model = load_model(model, device=device)
    volume, _ = load_inputs(inputs)
    check_volume(volume, model)
    pre = Preprocessor(model.preprocessing)
    x = pre.forward(volume)[None].to(model.device)
    spacing = np.linalg.norm(pre.model_affine()[:3, :3], axis=0)
    as_volume = lambda v: v if isinstance(v, Volume) else read_volume(v)
    mask_model = None if mask is None else pre.forward_mask(as_volume(mask))[0]
    settings = {k: dict(v) for k, v in (settings or {}).items()}
    if substrate is not None:
        if not (isinstance(substrate, str) and substrate in ("blur", "constant")):
            substrate = Preprocessor(model.preprocessing).forward(as_volume(substrate))[None].to(model.device)
        for curve in ("deletion", "insertion"):
            settings[curve] = {**settings.get(curve, {}), "substrate": substrate}
    params = {get_method(k).name: v for k, v in (params or {}).items()}
    records = []
    for name in ([methods] if isinstance(methods, str) else methods):
        records.append(evaluate(model, x, name, target=target, params=params.get(get_method(name).name), seed=seed,
                                metrics=metrics, settings=settings, mask=mask_model, spacing=spacing,
                                progress=progress))
    return records
