"""The registered metrics, one class each; registration order is the order of listings, records and rows.

Each class only binds a metric's settings, cost and summary columns to its
function in the property modules (correctness, randomisation, robustness,
compactness, coherence), which stay usable on their own.
"""
from __future__ import annotations

from ..methods.base import BASELINE
from ..methods.machinery.perturbation import SCORES as OUTPUTS
from .base import Evaluation, Metric, register
from .coherence import coherence, hit_at_k
from .compactness import compactness
from .correctness import completeness, faithfulness_correlation, perturbation_curve
from .randomisation import layer_groups, model_randomisation, randomisation_verdict
from .robustness import consistency, max_sensitivity, target_sensitivity


def _times(method, params, k: int) -> dict:
    """``k`` recomputed maps of the method, in passes."""
    cost = method.cost(params)
    return {"forward": k * cost["forward"], "backward": k * cost["backward"]}


class _Curve(Metric):
    co12 = "correctness"
    defaults = {"steps": 50, "substrate": "blur", "value": 0.0, "output": "probability", "until": 1.0}
    bounds = {"steps": (1, None), "substrate": BASELINE, "output": OUTPUTS, "until": (0.001, 1.0)}
    cost_text = "steps + 1 forward passes"
    reference = "Petsiuk et al. 2018 (RISE), in 3D"

    def cost(self, setting, method, params, *, x, model, n_classes):
        return {"forward": setting["steps"] + 1, "backward": 0}

    def run(self, ev: Evaluation, s: dict) -> dict:
        return perturbation_curve(ev.scorer(s["output"]), ev.attribution, self.name, s["steps"], s["substrate"],
                                  s["value"], s["until"])


@register
class Deletion(_Curve):
    name, title = "deletion", "Deletion curve: the score as the highest voxels are replaced by the substrate"
    columns = {"deletion_auc": "auc"}
    headline = {"deletion_auc": ("deletion AUC ↓", 3)}


@register
class Insertion(_Curve):
    name, title = "insertion", "Insertion curve: the score as the highest voxels are put into the substrate"
    columns = {"insertion_auc": "auc"}
    headline = {"insertion_auc": ("insertion AUC ↑", 3)}


@register
class FaithfulnessCorrelation(Metric):
    name, title = "faithfulness_correlation", "Correlation of subset sums of the map with the score drops"
    co12 = "correctness"
    defaults = {"samples": 64, "subset": 0.01, "substrate": "constant", "value": 0.0, "output": "logit"}
    bounds = {"samples": (2, None), "subset": (1e-6, 1.0), "substrate": BASELINE, "output": OUTPUTS}  # 2: correlate
    cost_text = "samples forward passes"
    reference = "Bhatt et al. 2020"
    columns = {"faithfulness_correlation": "correlation"}
    headline = {"faithfulness_correlation": ("faithfulness corr. ↑", 2)}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return {"forward": setting["samples"], "backward": 0}

    def run(self, ev: Evaluation, s: dict) -> dict:
        return faithfulness_correlation(ev.scorer(s["output"]), ev.attribution, s["samples"], s["subset"],
                                        s["substrate"], s["value"], ev.seed)


@register
class Randomisation(Metric):
    name, title = "randomisation", "Cascading model parameter randomisation, against an unrelated input's map"
    co12 = "correctness"
    defaults = {"depth": 2}
    bounds = {"depth": (1, None)}
    cost_text = "(layer groups + 1) x the method's passes"
    reference = "Adebayo et al. 2018"
    columns = {"randomisation_spearman": "final.spearman_abs", "randomisation_ssim": "final.ssim_abs",
               "randomisation_baseline": "baseline.spearman_abs", "cascade_sensitivity": "cascade_sensitivity",
               "randomisation_passed": "passed"}
    headline = {"cascade_sensitivity": ("cascade sensitivity ↑", 2)}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return _times(method, params, len(layer_groups(model.network, setting["depth"])) + 1)

    def run(self, ev: Evaluation, s: dict) -> dict:
        value = model_randomisation(ev.model, ev.x, ev.method, depth=s["depth"], pair=ev.pair, **ev.common())
        value["passed"] = randomisation_verdict(value)
        return value


@register
class Completeness(Metric):
    name, title = "completeness", "Completeness axiom: the map sums to score(x) - score(baseline)"
    co12 = "completeness"
    cost_text = "1 forward pass (the baseline's score; 3 with an 'auto' baseline) for methods with the axiom"
    reference = "Sundararajan et al. 2017"
    columns = {"completeness_error": "completeness_error"}
    headline = {"completeness_error": ("completeness error ↓", 3)}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return {"forward": method.completeness_passes(params) if method.completeness else 0, "backward": 0}

    def run(self, ev: Evaluation, s: dict) -> dict:
        return completeness(ev.scorer("logit"), ev.attribution, ev.method, ev.params)


@register
class Consistency(Metric):
    name, title = "consistency", "The same call twice gives the same map"
    co12 = "consistency"
    cost_text = "1 x the method's passes"
    columns = {"consistent": "identical"}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return _times(method, params, 1)

    def run(self, ev: Evaluation, s: dict) -> dict:
        return consistency(ev.model, ev.x, ev.method, **ev.common())


@register
class Continuity(Metric):
    name, title = "continuity", "Max-sensitivity: the largest relative change of the map under small noise"
    co12 = "continuity"
    defaults = {"samples": 8, "radius": 0.02, "batch_size": 4}
    bounds = {"samples": (1, None), "radius": (1e-6, None), "batch_size": (1, None)}  # radius 0: no noise at all
    cost_text = "samples x the method's passes"
    reference = "Yeh et al. 2019"
    columns = {"max_sensitivity": "max_sensitivity"}
    headline = {"max_sensitivity": ("max-sensitivity ↓", 2)}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return _times(method, params, setting["samples"])

    def run(self, ev: Evaluation, s: dict) -> dict:
        return max_sensitivity(ev.model, ev.x, ev.method, samples=s["samples"], radius=s["radius"],
                               batch_size=s["batch_size"], **ev.common())


@register
class Contrastivity(Metric):
    name, title = "contrastivity", "Target sensitivity: how alike the other classes' maps are"
    co12 = "contrastivity"
    cost_text = "(classes - 1) x the method's passes"
    columns = {"target_similarity": "spearman_abs"}
    headline = {"target_similarity": ("other-class similarity ↓", 2)}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return _times(method, params, max(n_classes - 1, 0))

    def run(self, ev: Evaluation, s: dict) -> dict:
        return target_sensitivity(ev.model, ev.x, ev.method, **ev.common())


@register
class Compactness(Metric):
    name, title = "compactness", "Gini index, entropy and mass shares of the map"
    co12 = "compactness"
    reference = "Chalasani et al. 2020; Bhatt et al. 2020"
    columns = {"gini": "gini", "entropy_normalised": "entropy_normalised", "voxels_50pct": "voxels_for_50pct_mass",
               "voxels_90pct": "voxels_for_90pct_mass"}
    headline = {"gini": ("Gini ↑", 2), "voxels_50pct": ("voxels for 50% mass ↓", 4)}

    def run(self, ev: Evaluation, s: dict) -> dict:
        return compactness(ev.attribution)


@register
class Coherence(Metric):
    name, title = "coherence", "Agreement with a ground-truth mask or region"
    co12 = "coherence"
    defaults = {"tolerance_mm": 0.0}
    bounds = {"tolerance_mm": (0.0, None)}
    reference = "Zhang et al. 2018; Arras et al. 2022"
    columns = {key: key for key in ("pointing_game", "relevance_mass", "relevance_rank", "average_precision",
                                    "hit_at_1", "hit_at_3")}
    headline = {"pointing_game": ("pointing game ↑", 2), "relevance_mass": ("relevance mass ↑", 3),
                "relevance_rank": ("rank acc. ↑", 3), "average_precision": ("voxel AP ↑", 3)}

    def run(self, ev: Evaluation, s: dict) -> dict:
        regions = ev.regions or ev.info.get("regions") or _score_rows(ev.info)
        mask, truth = ev.mask, ev.truth_region
        out = {"applies": mask is not None or (regions is not None and truth is not None)}
        if mask is not None:
            out.update(coherence(ev.attribution, mask, s["tolerance_mm"], tuple(float(v) for v in ev.spacing)))
        if regions is not None and truth is not None:
            out.update(hit_at_1=float(hit_at_k(regions, truth, 1)), hit_at_3=float(hit_at_k(regions, truth, 3)))
        return out


def _score_rows(info: dict):
    """Region methods' own scores ({id: score} for the first sample) as region-table rows, for hit@k."""
    scores = info.get("region_scores")
    if not scores:
        return None
    return [{"id": int(i), "name": str(i), "score": float(v)} for i, v in scores[0].items()]
