"""Quantitative quality of explanations: the Co-12 properties (Nauta et al. 2023) measured in 3D.

One module per property group; ``evaluate`` runs them all on one map and
states each metric's cost in forward/backward passes.
"""
from .coherence import (average_precision, coherence, hit_at_k, pointing_game, relevance_mass, relevance_rank,
                        top_mass_share)
from .common import Scorer, map_similarity, spearman, ssim, voxel_map
from .compactness import compactness, entropy, gini, mass_shares
from .correctness import completeness_error, faithfulness_correlation, perturbation_curve
from .evaluate import DEFAULTS, METRICS, PROPERTIES, evaluate, randomisation_verdict, stated_cost, summary_row
from .randomisation import layer_groups, model_randomisation
from .robustness import consistency, fixed_target, max_sensitivity, target_sensitivity

__all__ = ["average_precision", "coherence", "hit_at_k", "pointing_game", "relevance_mass", "relevance_rank",
           "top_mass_share", "Scorer", "map_similarity", "spearman", "ssim", "voxel_map", "compactness", "entropy",
           "gini", "mass_shares", "completeness_error", "faithfulness_correlation", "perturbation_curve", "DEFAULTS",
           "METRICS", "PROPERTIES", "evaluate", "randomisation_verdict", "stated_cost", "summary_row", "layer_groups",
           "model_randomisation", "consistency", "fixed_target", "max_sensitivity", "target_sensitivity"]
