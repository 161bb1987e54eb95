"""Quantitative quality of explanations: the Co-12 properties (Nauta et al. 2023) measured in 3D.

One module per property group; one class per metric in ``catalogue``, registered in ``REGISTRY``
(``get_metric``); ``evaluate`` runs them on one map and states each metric's cost in passes.
"""
from . import catalogue  # noqa: F401,I001  (registers the metrics; registration order = listing order)
from .base import REGISTRY, Evaluation, Metric, get_metric, metric_settings, register, summary_columns
from .coherence import (average_precision, coherence, hit_at_k, pointing_game, relevance_mass, relevance_rank,
                        top_mass_share)
from .common import Scorer, map_similarity, spearman, ssim, voxel_map
from .compactness import compactness, entropy, gini, mass_shares
from .correctness import completeness, faithfulness_correlation, perturbation_curve
from .evaluate import evaluate, evaluate_volumes, summary_row
from .randomisation import RANDOMISATION_MARGIN, layer_groups, model_randomisation, randomisation_verdict
from .robustness import consistency, fixed_target, max_sensitivity, target_sensitivity

__all__ = ["REGISTRY", "Evaluation", "Metric", "get_metric", "metric_settings", "register", "summary_columns",
           "average_precision", "coherence", "hit_at_k", "pointing_game", "relevance_mass", "relevance_rank",
           "top_mass_share", "Scorer", "map_similarity", "spearman", "ssim", "voxel_map", "compactness", "entropy",
           "gini", "mass_shares", "completeness", "faithfulness_correlation", "perturbation_curve", "evaluate",
           "evaluate_volumes", "summary_row", "RANDOMISATION_MARGIN", "layer_groups", "model_randomisation",
           "randomisation_verdict", "consistency", "fixed_target", "max_sensitivity", "target_sensitivity"]
