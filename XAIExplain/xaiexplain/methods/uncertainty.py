"""What a segmentation network is sure of, voxel by voxel: the class probability, the entropy of the prediction,
and model uncertainty from test-time flips and from Monte-Carlo dropout.

These are maps of the prediction, not of the evidence for it: unsigned, on the input grid like every map,
for the target class (the whole volume, not only its region). Uncertainty is the standard deviation of the
class probability over the passes: over the 2^3 flips of the three axes (each flipped back), or over
``samples`` passes with the network's dropout layers active (Gal & Ghahramani 2016), seeded.
"""
from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import torch
from torch import nn

from ..core.models import probabilities
from ..errors import XAIError
from .base import Context, Method, register

DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _voxelwise(ctx: Context, method: str) -> int:
    """The target class of a segmentation network's output, or a clear refusal."""
    if ctx.reference.ndim < 3:
        raise XAIError(f"{method} maps a segmentation network's voxelwise output; this model gives one score per "
                       "class", "use it with a segmentation model")
    return int(ctx.target.index)


def _class_probability(ctx: Context, output: torch.Tensor, index: int) -> torch.Tensor:
    return probabilities(output, ctx.model.output_kind)[:, index:index + 1]


class _PredictionMap(Method):
    family, signed, needs_gradients, classification, kind = "uncertainty", False, False, False, "ad-hoc"

    def cost(self, params):
        return {"forward": 0, "backward": 0}  # the case's own output


class Probability(_PredictionMap):
    name, title = "probability", "Class probability, voxel by voxel"
    reference = "the network's own output (softmax or sigmoid when it gives logits)"

    def run(self, ctx, **_):
        index = _voxelwise(ctx, self.name)
        return _class_probability(ctx, ctx.reference, index), {"class": index}


class Entropy(_PredictionMap):
    name, title = "entropy", "Entropy of the prediction, voxel by voxel (0: certain, 1: all classes alike)"
    reference = "Shannon entropy of the class probabilities, over log(number of classes)"

    def run(self, ctx, **_):
        _voxelwise(ctx, self.name)
        p = probabilities(ctx.reference, ctx.model.output_kind)
        if p.shape[1] == 1:  # one sigmoid output: the two classes p and 1 - p
            p = torch.cat([p, 1 - p], 1)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1, keepdim=True) / math.log(p.shape[1])
        return entropy, {"classes": int(p.shape[1]), "unit": "share of log(classes)"}


def _spread(ctx: Context, passes, n: int, index: int, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the class probability over the ``n`` outputs ``passes`` yields."""
    total = square = None
    count = 0
    for output in passes:
        p = _class_probability(ctx, output, index).double()
        total = p if total is None else total + p
        square = p * p if square is None else square + p * p
        count += 1
        ctx.report(count / n, f"{label}: pass {count} of {n}")
    mean = total / count
    return mean.float(), (square / count - mean * mean).clamp_min(0).sqrt().float()


class FlipUncertainty(Method):
    name, title = "tta-uncertainty", "Test-time augmentation: spread of the class probability over axis flips"
    family, signed, needs_gradients, classification, kind = "uncertainty", False, False, False, "ad-hoc"
    reference = "Wang et al. 2019 (test-time augmentation for segmentation uncertainty)"

    def cost(self, params):
        return {"forward": 8, "backward": 0}

    def run(self, ctx, **_):
        index = _voxelwise(ctx, self.name)
        flips = [axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)]

        def passes():
            with torch.inference_mode():
                for axes in flips:
                    x = torch.flip(ctx.x, axes) if axes else ctx.x
                    output = ctx.forward(x)
                    yield torch.flip(output, axes) if axes else output

        mean, spread = _spread(ctx, passes(), len(flips), index, "flips")
        return spread, {"class": index, "augmentations": len(flips),
                                                 "mean_probability_max": float(mean.max())}


@contextmanager
def _dropout_active(network: nn.Module):
    """The network's dropout layers in training mode (all else in evaluation mode), restored afterwards."""
    layers = [m for m in network.modules() if isinstance(m, DROPOUT)]
    before = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield layers
    finally:
        for m, mode in zip(layers, before):
            m.train(mode)


class DropoutUncertainty(Method):
    name, title = "mc-dropout", "Monte-Carlo dropout: spread of the class probability with dropout active"
    family, signed, needs_gradients, classification, kind = "uncertainty", False, False, False, "ad-hoc"
    defaults = {"samples": 16}
    bounds = {"samples": (2, None)}
    reference = "Gal & Ghahramani 2016"

    def cost(self, params):
        return {"forward": int(params["samples"]), "backward": 0}

    def run(self, ctx, samples):
        index = _voxelwise(ctx, self.name)
        network = ctx.model.network
        with _dropout_active(network) as layers:
            if not layers or all(float(getattr(m, "p", 0.0)) == 0.0 for m in layers):
                raise XAIError("the network has no dropout layer (or only ones with p = 0): Monte-Carlo dropout "
                               "would give the same output every pass", "use tta-uncertainty or entropy instead")
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(ctx.seed)  # the dropout masks, reproducibly

            def passes():
                with torch.inference_mode():
                    for _ in range(samples):
                        yield ctx.forward(ctx.x)

            try:
                mean, spread = _spread(ctx, passes(), samples, index, "dropout")
            finally:
                torch.random.set_rng_state(generator_state)
        return spread, {"class": index, "samples": samples, "dropout_layers": len(layers),
                                                 "seed": ctx.seed, "mean_probability_max": float(mean.max())}


for _method in (Probability, Entropy, FlipUncertainty, DropoutUncertainty):
    register(_method)
