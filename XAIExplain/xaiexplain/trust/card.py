"""The trust card: a map's quality checks, each with a verdict in plain words, its numbers and its cost.

Checks (``CHECKS``, in card order):

- randomisation: does the map change when the model's weights are re-initialised, top layers first, more than
  an unrelated input's map differs from it (Adebayo et al. 2018; ``metrics.randomisation``)?
- deletion / insertion: does removing (adding) voxels in the map's order change the score faster than in the
  order of random maps with the same values (the map's voxels shuffled: the same sparsity)?
- completeness: does the map sum to the score difference it claims (methods with the axiom)?
- saturation: is the target's probability saturated (then probability curves barely move)?
- shortcut: how much of the top evidence lies outside the anatomy (``trust.shortcut``; no ground truth)?
- warnings: what the engine found wrong with how the map was made (a degenerate baseline, a poor atlas
  registration, ...).

Verdicts: pass, fail, inconclusive, or n/a (the check does not apply to this method or model). The card's
own verdict: fail if any check fails, pass if every check that applies passes, else inconclusive. Every
check states its passes before it runs (:func:`card_cost`) and records what it used.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import XAIError
from ..methods.base import BASELINE, Cancelled, checked_value
from ..methods.machinery.perturbation import SCORES
from ..methods.machinery.scoring import Scorer
from ..metrics.correctness import completeness, perturbation_curve
from ..metrics.randomisation import RANDOMISATION_MARGIN, layer_groups, model_randomisation, randomisation_verdict
from .shortcut import shortcut_check

_CURVE = {"steps": 20, "until": 0.2, "random_maps": 2, "substrate": "blur", "output": "probability"}
DEFAULTS = {"randomisation": {"depth": 2, "pair": "mirrored"}, "deletion": dict(_CURVE), "insertion": dict(_CURVE),
            "completeness": {"tolerance": 0.05}, "saturation": {"limit": 0.999}, "shortcut": {}, "warnings": {}}
_CURVE_BOUNDS = {"steps": (2, None), "until": (0.001, 1.0), "random_maps": (1, None), "substrate": BASELINE,
                 "output": SCORES}
PAIRS = ("mirrored", "rolled")
BOUNDS = {"randomisation": {"depth": (1, None), "pair": PAIRS}, "deletion": _CURVE_BOUNDS, "insertion": _CURVE_BOUNDS,
          "completeness": {"tolerance": (1e-6, 1.0)}, "saturation": {"limit": (0.5, 1.0)}}
CHECKS = tuple(DEFAULTS)
PAIR_TOO_SIMILAR = 0.9  # an unrelated input's map this alike: randomisation cannot tell
CURVE_MARGIN = 0.05  # of the curves' score range: a map must beat its random twins by this much to pass
TITLES = {"randomisation": "Model randomisation", "deletion": "Deletion against random maps",
          "insertion": "Insertion against random maps", "completeness": "Completeness (summation)",
          "saturation": "Probability saturation", "shortcut": "Shortcut (evidence off the anatomy)",
          "warnings": "How the map was made"}


def card_settings(checks=None, settings: dict | None = None) -> dict:
    """{check: settings} for the chosen ``checks`` (default all) in card order, the defaults overridden by
    ``settings`` ({check: {name: value}}); unknown checks or settings are refused, all at once."""
    chosen = list(CHECKS) if not checks else list(dict.fromkeys(checks))
    unknown = sorted(set(chosen) - set(CHECKS)) + sorted(set(settings or {}) - set(CHECKS))
    if unknown:
        raise XAIError(f"unknown check(s) {', '.join(unknown)}", f"choose from: {', '.join(CHECKS)}")
    out = {}
    for name in CHECKS:
        given = dict((settings or {}).get(name) or {})
        bad = sorted(set(given) - set(DEFAULTS[name]))
        if bad:
            raise XAIError(f"check '{name}' has no setting {', '.join(bad)}",
                           f"its settings are: {', '.join(DEFAULTS[name]) or 'none'}")
        if name in chosen:
            out[name] = {**DEFAULTS[name], **{key: checked_value(f"{name}.{key}", value, DEFAULTS[name][key],
                                                                  BOUNDS.get(name, {}).get(key))
                                              for key, value in given.items()}}
    return out


def card_cost(chosen: dict, method, params: dict, model, shape: tuple, n_regions: int = 0) -> dict:
    """{check: {'forward': f, 'backward': b}}: what each chosen check will cost, stated before it runs."""
    per_map = method.estimate(params, shape, n_regions)
    out = {}
    for name, s in chosen.items():
        if name == "randomisation":
            k = len(layer_groups(model.network, s["depth"])) + 1 if _randomisable(model) else 0
            out[name] = {"forward": k * int(per_map["forward"]), "backward": k * int(per_map["backward"])}
        elif name in ("deletion", "insertion"):
            out[name] = {"forward": (s["steps"] + 1) * (1 + s["random_maps"]), "backward": 0}
        elif name == "completeness":
            out[name] = {"forward": method.completeness_passes(params) if method.completeness else 0, "backward": 0}
        else:
            out[name] = {"forward": 0, "backward": 0}
    return out


def _randomisable(model) -> bool:
    return bool(layer_groups(model.network, 1))


def trust_card(case, method, params: dict, target, maps, result, *, chosen: dict, seed: int = 0, progress=None,
               cancel=None, areas: dict | None = None) -> dict:
    """The card of one map: ``case`` (a PreparedCase), ``method`` with its ``params``, the resolved ``target``,
    the model-space ``maps`` (1, C, X, Y, Z), the map on the input grid in ``result`` (an Attribution, for its
    warnings and the shortcut check); ``chosen``: :func:`card_settings`. ``areas``: the image's suspect areas,
    shared by the maps of a run."""
    model, x = case.model, case.x
    stated = card_cost(chosen, method, params, model, tuple(x.shape[2:]), case.n_regions)
    scorers: dict = {}

    def scorer(output: str) -> Scorer:
        if output not in scorers:
            scorers[output] = Scorer.for_model(model, x, target, output=output)
        return scorers[output]

    runs = {"randomisation": lambda s: _randomisation(case, method, params, target, maps, seed, s, cancel),
            "deletion": lambda s: _curve(scorer(s["output"]), maps, "deletion", s, seed),
            "insertion": lambda s: _curve(scorer(s["output"]), maps, "insertion", s, seed),
            "completeness": lambda s: _completeness(scorer("logit"), maps, method, params, s),
            "saturation": lambda s: _saturation(scorer("probability"), s),
            "shortcut": lambda s: _shortcut(case.volume, result.array, areas),
            "warnings": lambda s: _warnings(result.warnings)}
    checks = []
    for number, (name, s) in enumerate(chosen.items()):
        if cancel is not None and cancel():
            raise Cancelled()
        if progress is not None:
            progress(number / len(chosen), f"{method.name}: check {name}")
        before = {output: sc.passes for output, sc in scorers.items()}
        start = time.perf_counter()
        entry = runs[name](s)
        used = entry.pop("passes", None)
        if used is None:  # the scorers' passes during this check
            used = {"forward": sum(sc.passes - before.get(o, 0) for o, sc in scorers.items()), "backward": 0}
        checks.append({"check": name, "title": TITLES[name], **entry, "settings": _recorded(s), "passes": used,
                       "stated_passes": stated[name], "seconds": round(time.perf_counter() - start, 3)})
    verdicts = [c["verdict"] for c in checks if c["verdict"] != "n/a"]
    overall = "fail" if "fail" in verdicts else "pass" if verdicts and set(verdicts) == {"pass"} else "inconclusive"
    return {"verdict": overall, "text": _overall_text(overall, checks), "checks": checks, "seed": seed,
            "passes": {k: sum(c["passes"][k] for c in checks) for k in ("forward", "backward")},
            "stated_passes": {k: sum(v[k] for v in stated.values()) for k in ("forward", "backward")}}


def _recorded(setting: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool)) else "reference volume" for k, v in setting.items()}


def _overall_text(verdict: str, checks: list[dict]) -> str:
    failed = [c["check"] for c in checks if c["verdict"] == "fail"]
    unsure = [c["check"] for c in checks if c["verdict"] == "inconclusive"]
    if verdict == "fail":
        return f"do not trust this map as it is: {', '.join(failed)} failed"
    if verdict == "pass":
        return "every check that applies passed"
    return f"no check failed; {', '.join(unsure) or 'none'} could not decide" if unsure else "no check applies"


def _randomisation(case, method, params, target, maps, seed, s, cancel) -> dict:
    if not _randomisable(case.model):
        return {"verdict": "n/a", "text": "the model's weights cannot be re-initialised here (no layer with "
                                          "reset_parameters, e.g. a TorchScript program)",
                "passes": {"forward": 0, "backward": 0}}
    context = {"regions": case.regions_model, "references": case.references_model}
    # the unrelated input: by default the scan mirrored along its first axis (a body in the same place, its
    # evidence elsewhere: as another case would be); 'rolled' moves the body to the corners
    pair = case.x.flip(2) if s["pair"] == "mirrored" else None
    value = model_randomisation(case.model, case.x, method, target=target, attribution=maps, params=params,
                                seed=seed, depth=s["depth"], pair=pair, context=context, cancel=cancel)
    final, pair = value["final"]["spearman_abs"], value["baseline"]["spearman_abs"]
    numbers = {"randomised_spearman": final, "unrelated_spearman": pair, "margin": RANDOMISATION_MARGIN,
               "randomised_ssim": value["final"]["ssim_abs"], "cascade_sensitivity": value["cascade_sensitivity"],
               "steps": value["steps"], "pair": s["pair"], "passes": value["passes"]}
    if pair >= PAIR_TOO_SIMILAR and final > pair - 2 * RANDOMISATION_MARGIN:
        verdict = "inconclusive"
        text = (f"maps of unrelated inputs already agree (Spearman {pair:.2f}): randomising the model cannot be "
                "told from changing the input")
    elif randomisation_verdict(value):
        verdict = "pass"
        text = (f"the map follows the model: with every layer re-initialised it is no more like the original "
                f"(Spearman {final:.2f}) than an unrelated input's map is ({pair:.2f})")
    else:
        verdict = "fail"
        text = (f"the map survives the destruction of the model (Spearman {final:.2f} with every layer "
                f"re-initialised, against {pair:.2f} for an unrelated input's map): it shows the image more than "
                "the model")
    return {"verdict": verdict, "text": text, **numbers}


def _curve(scorer: Scorer, maps, mode: str, s: dict, seed: int) -> dict:
    from ..metrics.common import voxel_map

    a = voxel_map(maps)
    rng = np.random.default_rng(seed)
    args = (mode, s["steps"], s["substrate"], 0.0, s["until"])
    own = perturbation_curve(scorer, a, *args)
    randoms = [perturbation_curve(scorer, rng.permutation(a.ravel()).reshape(a.shape), *args)
               for _ in range(s["random_maps"])]
    auc, random_aucs = own["auc"], [r["auc"] for r in randoms]
    every = np.array([own["scores"]] + [r["scores"] for r in randoms])
    scale = max(float(every.max() - every.min()), 1e-12)
    gain = (np.mean(random_aucs) - auc) if mode == "deletion" else (auc - np.mean(random_aucs))
    spread = max(random_aucs) - min(random_aucs)
    if gain > max(spread, CURVE_MARGIN * scale):
        verdict = "pass"
    elif gain <= 0:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    verb = "removing" if mode == "deletion" else "adding"
    better = "faster" if verdict == "pass" else "no faster" if verdict == "fail" else "only a little faster"
    text = (f"{verb} voxels in the map's order changes the {scorer.output} {better} than in random orders "
            f"(AUC {auc:.3f} against {np.mean(random_aucs):.3f} for random maps of the same values)")
    return {"verdict": verdict, "text": text, "auc": auc, "random_aucs": random_aucs, "gain": float(gain),
            "score_range": scale, "fractions": own["fractions"], "scores": own["scores"],
            "random_scores": [r["scores"] for r in randoms], "output": scorer.output}


def _completeness(scorer: Scorer, maps, method, params, s) -> dict:
    if not method.completeness:
        return {"verdict": "n/a", "text": f"{method.name} makes no claim that its map sums to a score difference"}
    value = completeness(scorer, maps, method, params)
    error = value["completeness_error"]
    verdict = "pass" if error <= s["tolerance"] else "fail" if error > 5 * s["tolerance"] else "inconclusive"
    text = (f"the map sums to {value['sum']:.4g} for a score difference of {value['score_difference']:.4g} "
            f"(relative error {error:.1%}; tolerance {s['tolerance']:.0%})")
    return {"verdict": verdict, "text": text, **value}


def _saturation(scorer: Scorer, s) -> dict:
    p = scorer.base
    saturated = p > s["limit"] or p < 1 - s["limit"]
    text = (f"the target's probability is {p:.5f}: saturated, so scores on the probability barely move until "
            "most evidence is gone; read the curves on the logit (deletion.output=logit)" if saturated else
            f"the target's probability is {p:.3f}: not saturated")
    return {"verdict": "inconclusive" if saturated else "pass", "text": text, "probability": p}


def _shortcut(image, array, areas) -> dict:
    value = shortcut_check(image, array, areas)
    value.pop("check")
    region = value.pop("region")
    value["region_voxels"] = 0 if region is None else int((region > 0).sum())
    value["region"] = region  # taken off the card by the caller (a volume, not a number)
    return value


def _warnings(warnings: list) -> dict:
    if not warnings:
        return {"verdict": "pass", "text": "the engine found nothing wrong with how the map was made",
                "warnings": []}
    return {"verdict": "fail", "text": "; ".join(w.get("message", "") for w in warnings), "warnings": warnings}
