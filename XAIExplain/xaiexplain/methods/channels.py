"""Which input channel (MRI sequence) the decision rests on: exact Shapley values over the channels.

Each of the 2^C coalitions of channels is scored, the channels outside it replaced by their baseline; a
channel's Shapley value is its weighted mean marginal contribution (Shapley 1953), and the values add
up to score(all) - score(none) exactly (efficiency, recorded). The values are a table (``info``): the map
spreads each channel's value evenly over its voxels, so that summed per channel it gives that value.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..core.baselines import baseline_for, describe_baseline
from ..core.models import probabilities
from ..errors import XAIError
from .base import BASELINE, Method, completeness_error, register
from .machinery.perturbation import SCORES, check_score

MAX_CHANNELS = 8  # 256 coalitions


class ChannelShapley(Method):
    name, title, family = "channel-shapley", "Exact Shapley values of the input channels (sequences)", "perturbation"
    needs_gradients, min_channels = False, 2
    defaults = {"baseline": "blur", "score": "logit"}
    bounds = {"baseline": BASELINE, "score": SCORES}
    reference = "Shapley 1953; over input channels, exact"

    def cost(self, params):
        return {"forward": 2 ** 4, "backward": 0, "per": "4 channels"}  # 2^C coalitions

    def run(self, ctx, baseline, score):
        check_score(score)
        n, channels = ctx.x.shape[0], ctx.x.shape[1]
        if channels < 2 or channels > MAX_CHANNELS:
            raise XAIError(f"{self.name} needs 2 to {MAX_CHANNELS} input channels, the model takes {channels}",
                           "use it with a multi-channel model (one --input per sequence)")
        base = baseline_for(ctx.x, baseline)
        coalitions = list(itertools.product((False, True), repeat=channels))
        values, maps, infos = [], [], []
        for sample in range(n):
            keep = torch.tensor(coalitions, device=ctx.x.device).view(len(coalitions), channels, 1, 1, 1)
            copies = torch.where(keep, ctx.x[sample:sample + 1], base[sample:sample + 1])
            rows = torch.full((len(coalitions),), sample, dtype=torch.long, device=ctx.x.device)
            with torch.inference_mode():
                output = ctx.forward(copies)
            if score == "probability":
                output = probabilities(output, ctx.model.output_kind)
            scored = dict(zip(coalitions, ctx.score(output, rows).double().cpu().tolist()))
            phi = [_shapley(scored, c, channels) for c in range(channels)]
            full, empty = scored[(True,) * channels], scored[(False,) * channels]
            volume = float(ctx.x[0, 0].numel())
            maps.append(torch.tensor(phi, dtype=ctx.x.dtype).view(channels, 1, 1, 1).expand(ctx.x.shape[1:]) / volume)
            values.append(phi)
            infos.append((sum(phi), full - empty))
        info = {"baseline": describe_baseline(baseline), "score": score, "coalitions": len(coalitions),
                "channel_shapley": values, "score_difference": [d for _, d in infos],
                "completeness_error": float(completeness_error([s for s, _ in infos], [d for _, d in infos]).max())}
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
