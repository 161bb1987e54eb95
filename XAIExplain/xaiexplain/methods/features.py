"""Deep feature maps: one channel of a layer as a volume on the input grid, the layer's channels ranked by
how much each contributes to the target (gradient x activation summed over the channel: the first-order
share of the target score that passes through it).

A way to browse what a layer detects: the map is the channel's activation itself (not a gradient), brought
onto the input grid like every layer map (axes checked, then interpolated); ``info["channels"]`` ranks the
``top`` channels with their contribution and share, so a front end can offer the next one. ``channel``
chooses one (default: the one contributing most). The layer is chosen as for Grad-CAM (``--layer``).
"""
from __future__ import annotations

import torch

from ..errors import XAIError
from .base import Method, register
from .cam import layer_activations_and_gradients, on_input


class FeatureMap(Method):
    name, title = "feature-map", "A layer's channel as a volume; channels ranked by contribution"
    family, needs_layers, through_windows, kind = "feature", True, False, "ad-hoc"
    defaults = {"channel": None, "top": 10}
    bounds = {"channel": (0, None), "top": (1, None)}
    reference = "Zeiler & Fergus 2014 (visualising feature maps); gradient x activation per channel"

    def run(self, ctx, channel, top):
        layer = layer_activations_and_gradients(ctx)
        channels = layer.acts.shape[1]
        if channel is not None and channel >= channels:
            raise XAIError(f"feature-map.channel={channel} is out of range: layer '{layer.name}' has {channels} "
                           "channels", f"give a channel from 0 to {channels - 1}, or none for the top one")
        contribution = (layer.grads.double() * layer.acts.double()).flatten(2).sum(2).mean(0)  # (K,)
        order = torch.argsort(contribution, descending=True)
        chosen = int(order[0]) if channel is None else int(channel)
        total = float(contribution.abs().sum()) or 1.0
        ranking = [{"channel": int(k), "contribution": float(contribution[k]),
                    "share": float(contribution[k]) / total} for k in order[:top]]
        return on_input(ctx, layer, layer.acts[:, chosen:chosen + 1], channel=chosen, channels=ranking,
                        layer_channels=channels, rank=int((order == chosen).nonzero()[0]) + 1)


register(FeatureMap)
