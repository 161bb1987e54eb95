"""Deep feature maps: one channel of a layer as a volume on the input grid, the layer's channels ranked by
how much each contributes to the target: gradient x activation summed over the channel (the first-order
share of the target score that passes through it), or the LRP relevance that reaches the channel
(``rank_by="lrp"``, the LRP method's composite: what the channel holds of the score under its rules).

A way to browse what a layer detects: the map is the channel's activation itself (not a gradient), brought
onto the input grid like every layer map (axes checked, then interpolated); ``info["ranking"]`` ranks the
``top`` channels with their contribution and share, so a front end can offer the next one. ``channel``
chooses one (default: the one contributing most). The layer is chosen as for Grad-CAM (``--layer``).
"""
from __future__ import annotations

import torch

from ..core.targets import ClassTarget
from ..errors import XAIError
from .base import Context, Method, register
from .cam import layer_activations_and_gradients, on_input
from .lrp import COMPOSITES, propagate
from .machinery.layer_grid import spatial_layers


class FeatureMap(Method):
    name, title = "feature-map", "A layer's channel as a volume; channels ranked by contribution"
    family, needs_layers, through_windows, kind = "feature", True, False, "ad-hoc"
    defaults = {"channel": None, "top": 10, "rank_by": "gradient-x-activation", "composite": "epsilon-plus-flat"}
    bounds = {"channel": (0, None), "top": (1, None), "rank_by": ("gradient-x-activation", "lrp"),
              "composite": tuple(COMPOSITES)}
    reference = "Zeiler & Fergus 2014 (visualising feature maps); gradient x activation or LRP per channel"

    def cost(self, params):
        return {"forward": 2, "backward": 2} if params.get("rank_by") == "lrp" else {"forward": 1, "backward": 1}

    def run(self, ctx, channel, top, rank_by, composite):
        layer = layer_activations_and_gradients(ctx)
        channels = layer.acts.shape[1]
        if channel is not None and channel >= channels:
            raise XAIError(f"feature-map.channel={channel} is out of range: layer '{layer.name}' has {channels} "
                           "channels", f"give a channel from 0 to {channels - 1}, or none for the top one")
        if rank_by == "lrp":
            contribution = layer_relevance(ctx, layer.name, composite).double().flatten(2).sum(2).mean(0)
        else:
            contribution = (layer.grads.double() * layer.acts.double()).flatten(2).sum(2).mean(0)  # (K,)
        order = torch.argsort(contribution, descending=True)
        chosen = int(order[0]) if channel is None else int(channel)
        total = float(contribution.abs().sum()) or 1.0
        ranking = [{"channel": int(k), "contribution": float(contribution[k]),
                    "share": float(contribution[k]) / total} for k in order[:top]]
        return on_input(ctx, layer, layer.acts[:, chosen:chosen + 1], channel=chosen, ranking=ranking,
                        layer_channels=channels, rank=int((order == chosen).nonzero()[0]) + 1, ranked_by=rank_by,
                        **({"composite": composite} if rank_by == "lrp" else {}))


def layer_relevance(ctx, name: str, composite: str) -> torch.Tensor:
    """The LRP relevance (``composite``'s rules) that reaches layer ``name``'s output: (N, K, *layer grid)."""
    return propagate(ctx, {"composite": composite}, at=name)[0]


register(FeatureMap)


def feature_layers(case) -> list[dict]:
    """The layers a feature map can show on a prepared case (``core.case.PreparedCase``): every module with a
    spatial output, in completion order, with its channels and grid (``spatial_layers``: one forward pass)."""
    if case.model.inferer is not None:
        raise XAIError("feature maps are read from one pass over the whole input, and this model runs on sliding "
                       "windows", "explain it without windows (inferer={}), on an input of its window size")
    return spatial_layers(Context(case.model, case.x, ClassTarget(), reference=None))
