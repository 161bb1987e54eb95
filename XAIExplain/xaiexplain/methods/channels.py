"""Which input channel (MRI sequence) the decision rests on: exact Shapley values over the channels.

Each of the 2^C coalitions of channels is scored (by the perturbation methods' scorer, in batches that fit
the free memory), the channels outside it replaced by their baseline; a channel's Shapley value is its
weighted mean marginal contribution (Shapley 1953), and the values add up to score(all) - score(none)
exactly (efficiency, recorded). The values are a table (``info``): the map
spreads each channel's value evenly over its voxels, so that summed per channel it gives that value.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..core.baselines import baseline_for, describe_baseline
from ..errors import XAIError
from .base import BASELINE, Method, completeness_error, register
from .machinery.perturbation import SCORES, check_score
from .machinery.scoring import Scorer

MAX_CHANNELS = 8  # 256 coalitions


class ChannelShapley(Method):
    name, title, family = "channel-shapley", "Exact Shapley values of the input channels (sequences)", "perturbation"
    needs_gradients, min_channels = False, 2
    defaults = {"baseline": "blur", "score": "logit", "batch_size": None}
    bounds = {"baseline": BASELINE, "score": SCORES, "batch_size": (1, None)}
    reference = "Shapley 1953; over input channels, exact"

    def cost(self, params):
        return {"forward": 2 ** 4 + 1, "backward": 0, "per": "4 channels"}  # 2^C coalitions and the scorer's probe

    def run(self, ctx, baseline, score, batch_size):
        check_score(score)
        n, channels = ctx.x.shape[0], ctx.x.shape[1]
        if channels < 2 or channels > MAX_CHANNELS:
            raise XAIError(f"{self.name} needs 2 to {MAX_CHANNELS} input channels, the model takes {channels}",
                           "use it with a multi-channel model (one --input per sequence)")
        base_all = baseline_for(ctx.x, baseline)
        coalitions = list(itertools.product((False, True), repeat=channels))
        keep_all = torch.tensor(coalitions, device=ctx.x.device).view(len(coalitions), channels, 1, 1, 1)
        values, maps, sums, deltas = [], [], [], []
        for sample in range(n):
            x, base = ctx.x[sample:sample + 1], base_all[sample:sample + 1]
            scorer = Scorer(ctx, sample, len(coalitions), batch_size, "channel Shapley")  # batches fit the memory
            scored = []
            for part in scorer.slices():
                logits, probs = scorer(torch.where(keep_all[part], x, base))
                scored += scorer.pick(logits, probs, score).tolist()
            scored = dict(zip(coalitions, scored))
            phi = [_shapley(scored, c, channels) for c in range(channels)]
            maps.append(torch.tensor(phi, dtype=ctx.x.dtype).view(channels, 1, 1, 1).expand(ctx.x.shape[1:])
                        / float(ctx.x[0, 0].numel()))
            values.append(phi)
            sums.append(sum(phi))
            deltas.append(scored[(True,) * channels] - scored[(False,) * channels])
        info = {**scorer.facts, "baseline": describe_baseline(baseline), "score": score, "coalitions": len(coalitions),
                "channel_shapley": values, "score_difference": deltas,
                "completeness_error": float(completeness_error(sums, deltas).max())}
        return torch.stack(maps).to(ctx.x.device), info


def _shapley(scored: dict, channel: int, channels: int) -> float:
    """Exact Shapley value of ``channel`` from every coalition's score."""
    total = 0.0
    for coalition, value in scored.items():
        if coalition[channel]:
            continue
        size = sum(coalition)
        weight = math.factorial(size) * math.factorial(channels - size - 1) / math.factorial(channels)
        joined = coalition[:channel] + (True,) + coalition[channel + 1:]
        total += weight * (scored[joined] - value)
    return total


register(ChannelShapley)
