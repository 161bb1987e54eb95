"""The SynthLesion benchmark: every registered method, every metric, both demo models.

    xaiexplain benchmark --cases 4 --out benchmark-report     # small (CI-sized)
    xaiexplain benchmark --cases 30 --full --out report       # larger, the metrics' full settings

Cases are fresh positives (evaluation seeds, never seen in training). Each map
is scored with ``metrics.evaluate`` against the lesion mask, with the exact
counterfactual as the deletion/insertion substrate and the next case as the
randomisation test's unrelated pair. The shortcut test explains 'lesion' on
positives carrying the planted marker and measures how much of the top 10% of
the attribution mass lies on the marker, for the shortcut and the clean model.
Means come with percentile-bootstrap 95% confidence intervals.
"""
from __future__ import annotations

import time

import numpy as np

from ..core.attribute import attribute
from ..core.case import PreparedCase, prepare_case
from ..core.models import load_model, probabilities
from ..core.provenance import versions
from ..methods import REGISTRY, get_method
from ..metrics import REGISTRY as METRICS
from ..metrics import evaluate, get_metric, summary_columns, summary_row, top_mass_share
from ..metrics.common import bootstrap_ci
from ..protocol import demo_bundle
from .synth import generate_case, marker_mask, region_names
from .train import EVAL_SEED_START

SEED_START = EVAL_SEED_START + 50_000
MARKED_SEED_START = EVAL_SEED_START + 60_000
MODELS = {"clean": "synthlesion_classifier", "shortcut": "synthlesion_shortcut"}
TOLERANCE_MM = 6.0  # two voxels, as the demo's peak-in-lesion check
TOP_FRACTION = 0.1
# Cheaper settings for the default (CI-sized) run; --full uses the metrics' own defaults.
# The lesion is ~0.05% of the volume: the curves stop at 1% of the voxels, where the maps differ.
CURVE_UNTIL = 0.01
QUICK_SETTINGS = {"deletion": {"steps": 20}, "insertion": {"steps": 20},
                  "faithfulness_correlation": {"samples": 32}, "continuity": {"samples": 3}}
PAIR_TOO_SIMILAR = 0.9  # randomisation: unrelated inputs give maps this alike, the test cannot tell
QUICK_PARAMS = {"integrated-gradients": {"steps": 8}, "smoothgrad": {"samples": 5}, "occlusion": {"stride": 16},
                "rise": {"masks": 500}, "lime": {"samples": 200}, "kernel-shap": {"samples": 256}}


def _prepare(model, case, reference) -> PreparedCase:
    """``case`` in model space with its atlas labels (for region methods) and ``reference`` (a volume:
    DeepSHAP's reference; the curves' substrate in the main run)."""
    return prepare_case(model, case.volume, regions=case.labels, region_names=region_names(), references=reference)


def _context(prepared: PreparedCase) -> dict:
    """What region methods and DeepSHAP need beyond the input, in model space."""
    return {"regions": prepared.regions_model, "references": prepared.references_model}


def _probability(model, x) -> float:
    return float(probabilities(model.output(x))[0, 1])


def run_benchmark(n_cases: int = 2, methods=None, models=tuple(MODELS), marked_cases: int | None = None,
                  full: bool = False, metrics=None, device="cpu", progress=None) -> dict:
    """Run the benchmark; returns rows (one per model, case and method), the shortcut test and aggregates.
    ``metrics``: names from ``metrics.REGISTRY`` (default all)."""
    methods = [get_method(m).name for m in (methods or [n for n, m in REGISTRY.items()  # the demo models' kind
                                                        if m.classification and m.min_channels == 1
                                                        and m.kind == "post-hoc"])]
    settings = {} if full else QUICK_SETTINGS
    params = {} if full else QUICK_PARAMS
    loaded = {kind: load_model(demo_bundle(MODELS[kind]), device=device) for kind in models}
    cases = [generate_case(SEED_START + i, positive=True) for i in range(n_cases)]
    rows, curves = [], []
    start = time.perf_counter()
    total = len(loaded) * n_cases * len(methods)
    done = 0
    for kind, model in loaded.items():
        prepared = [_prepare(model, case, case.counterfactual) for case in cases]
        for i, (case, ready) in enumerate(zip(cases, prepared)):
            x, counterfactual = ready.x, ready.references_model
            mask, spacing = ready.mask_to_model(case.lesion_mask), ready.spacing_model()
            pair = prepared[(i + 1) % n_cases].x if n_cases > 1 else None
            probability = _probability(model, x)
            case_settings = {**{k: dict(v) for k, v in settings.items()}}
            for curve in ("deletion", "insertion"):
                case_settings[curve] = {**case_settings.get(curve, {}), "substrate": counterfactual,
                                        "until": CURVE_UNTIL}
            case_settings["coherence"] = {"tolerance_mm": TOLERANCE_MM}
            for name in methods:
                method = get_method(name)
                if method.needs_layers and not model.has_layers:
                    continue
                record = evaluate(model, x, method, target=1, params=params.get(name), seed=0, metrics=metrics,
                                  settings=case_settings,
                                  mask=mask, spacing=spacing, pair=pair, regions=None, truth_region=case.region_id,
                                  context=_context(ready))
                row = {"model": kind, "case_seed": case.params["seed"], "region": case.region_name,
                       "lesion_voxels": int(mask.sum()), "p_lesion": probability, "correct": probability > 0.5,
                       **summary_row(record)}
                if not row["correct"]:
                    for key in get_metric("coherence").columns:
                        row[key] = float("nan")  # coherence is scored on correctly classified positives only
                rows.append(row)
                for curve in ("deletion", "insertion"):
                    metric = record["metrics"].get(curve)
                    if metric:
                        curves.append({"model": kind, "method": name, "curve": curve, "case_seed": row["case_seed"],
                                       "fractions": metric["fractions"], "scores": metric["scores"]})
                done += 1
                if progress is not None:
                    progress(done / total, f"{kind} case {i + 1}/{n_cases} {name}")
    shortcut = shortcut_test(loaded, methods, marked_cases if marked_cases is not None else n_cases, params)
    return {"n_cases": n_cases, "methods": methods, "models": {k: MODELS[k] for k in loaded}, "full": full,
            "case_seeds": [c.params["seed"] for c in cases], "metric_settings": _describe_settings(settings),
            "method_params": {m: get_method(m).params(params.get(m)) for m in methods},
            "rows": rows, "curves": curves, "shortcut": shortcut, "aggregates": aggregate(rows),
            "randomisation": randomisation_verdicts(rows), "seconds": round(time.perf_counter() - start, 1),
            "versions": versions(), "device": str(device)}


def _describe_settings(settings: dict) -> dict:
    out = {name: metric.settings(settings.get(name)) for name, metric in METRICS.items()}
    for curve in ("deletion", "insertion"):
        out[curve].update(substrate="counterfactual (reference volume)", until=CURVE_UNTIL)
    out["coherence"]["tolerance_mm"] = TOLERANCE_MM
    out["randomisation"]["pair"] = "the next benchmark case"
    return out


def shortcut_test(loaded: dict, methods, n_cases: int, params: dict) -> dict:
    """Share of the top 10% of positive attribution mass on the marker, per model and method.

    Cases: positives with the marker. For the shortcut model only cases where the marker drives the
    prediction count (p(lesion) > 0.5 with it, < 0.5 on the same case without it).
    """
    cases = [(generate_case(MARKED_SEED_START + i, positive=True, marker=True),
              generate_case(MARKED_SEED_START + i, positive=True, marker=False)) for i in range(n_cases)]
    out = {"n_cases": n_cases, "case_seeds": [c.params["seed"] for c, _ in cases], "top_fraction": TOP_FRACTION,
           "tolerance_mm": TOLERANCE_MM, "models": {}}
    for kind, model in loaded.items():
        marker = None
        per_method = {m: {"on_marker": [], "within_tolerance": []} for m in methods}
        driven = []
        for marked, unmarked in cases:
            # DeepSHAP's reference: the twin with neither lesion nor marker, so that the map has to choose
            # between the two (against the unmarked twin only the marker differs: all mass on it by construction)
            ready = _prepare(model, marked, unmarked.counterfactual)
            x, context = ready.x, _context(ready)
            if marker is None:
                marker = ready.mask_to_model(marker_mask()).cpu().numpy() > 0.5
                spacing = ready.spacing_model()
            x_clean = prepare_case(model, unmarked.volume).x
            p_marked, p_clean = _probability(model, x), _probability(model, x_clean)
            drives = p_marked > 0.5 and p_clean < 0.5
            driven.append({"case_seed": marked.params["seed"], "p_marked": p_marked, "p_unmarked": p_clean,
                           "marker_drives": drives})
            if kind == "shortcut" and not drives:
                continue
            for name in methods:
                method = get_method(name)
                if method.needs_layers and not model.has_layers:
                    continue
                maps, _, _ = attribute(model, x, method, target=1, params=params.get(name), seed=0, **context)
                per_method[name]["on_marker"].append(top_mass_share(maps, marker, TOP_FRACTION))
                per_method[name]["within_tolerance"].append(
                    top_mass_share(maps, marker, TOP_FRACTION, TOLERANCE_MM, spacing))
        out["models"][kind] = {"cases": driven, "methods": {
            m: {key: bootstrap_ci(v) for key, v in values.items()} for m, values in per_method.items()}}
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and bootstrap 95% interval of every numeric column (the registered metrics'), per model and method."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    for model, method in keys:
        group = [r for r in rows if r["model"] == model and r["method"] == method]
        entry = {"model": model, "method": method, "n": len(group)}
        for column in summary_columns():
            mean, low, high, n = bootstrap_ci([r.get(column, float("nan")) for r in group])
            entry[column] = {"mean": mean, "low": low, "high": high, "n": n}
        out.append(entry)
    return out


def randomisation_verdicts(rows: list[dict]) -> dict:
    """Per model and method: the share of cases passing the randomisation test, and the verdict (majority).

    'inconclusive' where the maps of unrelated inputs already agree (mean pair Spearman >= PAIR_TOO_SIMILAR,
    e.g. region maps painted on the same atlas): no randomised map can then fall below the pair.
    """
    out: dict = {}
    for r in rows:
        if r.get("randomisation_passed") == r.get("randomisation_passed"):
            out.setdefault(r["model"], {}).setdefault(r["method"], []).append(
                (r["randomisation_passed"], r.get("randomisation_baseline", float("nan"))))
    verdicts: dict = {}
    for model, methods in out.items():
        for m, values in methods.items():
            passed, pair = np.mean([v[0] for v in values]), np.nanmean([v[1] for v in values])
            verdict = "inconclusive" if pair >= PAIR_TOO_SIMILAR else "pass" if passed > 0.5 else "fail"
            verdicts.setdefault(model, {})[m] = {"passed_share": float(passed), "pair_spearman": float(pair),
                                                 "verdict": verdict}
    return verdicts