"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM.

The layer is found in the same forward pass that computes the map: hooks on
every submodule record spatial outputs in completion order and the last one
is the "last spatial feature map" (overridable by module name). Activation
modules are switched to out-of-place during the pass so that a following
in-place ReLU cannot change the captured activations. Maps are upsampled
(trilinear, align_corners=False) to the model input grid. Unlike MONAI's
default CAM post-processing, maps are never min-max inverted: larger means
more evidence for the target.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..errors import XAIError
from .backprop import modified_gradient
from .base import Method, register

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@contextmanager
def capture_layer(ctx, layer: str | None):
    """Yield a list that fills with (name, output) for spatial outputs during the forward pass."""
    modules = ctx.model.named_layers()
    if layer is not None and layer not in modules:
        raise XAIError(f"layer '{layer}' not found in the model",
                       f"use a module name such as: {', '.join(spatial_layers(ctx)[-5:])}")
    spatial_ndim = ctx.x.ndim
    captured: list = []
    handles, inplace = [], []
    for name, module in modules.items():
        if getattr(module, "inplace", False) is True:
            inplace.append(module)
            module.inplace = False
        if name and (layer is None or name == layer):
            def hook(_mod, _inp, out, name=name):
                if isinstance(out, torch.Tensor) and out.ndim == spatial_ndim and out.shape[2:].numel() > 1:
                    captured.append((name, out))
            handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
        for module in inplace:
            module.inplace = True


def spatial_layers(ctx) -> list[str]:
    """Names of the modules producing spatial maps, in completion order (one forward pass)."""
    with torch.no_grad(), capture_layer(ctx, None) as captured:
        ctx.forward(ctx.x[:1])
    return list(dict.fromkeys(name for name, _ in captured))


def layer_activations_and_gradients(ctx):
    """(layer name, activations A, d score / d A, scores) from one forward and one partial backward."""
    with torch.enable_grad():
        x = ctx.x.detach().requires_grad_(True)  # keeps a graph even for frozen parameters
        with capture_layer(ctx, ctx.layer) as captured:
            scores = ctx.score(ctx.forward(x))
        if not captured:
            raise XAIError("the model produced no spatial feature map to explain",
                           "CAM methods need a convolutional layer; use a gradient method")
        name, acts = captured[-1]
        (grads,) = torch.autograd.grad(scores.sum(), acts)
    ctx.passes["backward"] += int(x.shape[0])
    return name, acts.detach(), grads.detach(), scores.detach()


def upsample(maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if maps.shape[2:] == like.shape[2:]:
        return maps
    return F.interpolate(maps, size=like.shape[2:], mode=_MODES[maps.ndim - 2], align_corners=False)


def gradcam(ctx) -> tuple[torch.Tensor, dict]:
    name, acts, grads, _ = layer_activations_and_gradients(ctx)
    weights = grads.flatten(2).mean(2)[..., None, None, None]
    cam = F.relu((weights * acts).sum(1, keepdim=True))
    return upsample(cam, ctx.x), {"layer": name, "layer_shape": list(acts.shape[1:])}


class CAM(Method):
    name, title, family = "cam", "CAM (global pooling + linear head)", "cam"
    needs_layers, segmentation = True, False
    reference = "Zhou et al. 2016"

    def cost(self, params):
        return {"forward": 2, "backward": 1}

    def run(self, ctx, **_):
        name, acts, grads, scores = layer_activations_and_gradients(ctx)
        # Behind global (average or max) pooling + linear, the gradient summed over space is the class
        # weight of each channel; CAM is then w . A(v) at every position.
        weights = grads.flatten(2).sum(2)
        pooling = _check_linear_pooling_head(ctx, name, acts, weights, scores)
        cam = (weights[..., None, None, None] * acts).sum(1, keepdim=True)
        return upsample(cam, ctx.x), {"layer": name, "layer_shape": list(acts.shape[1:]), "pooling": pooling}


def _check_linear_pooling_head(ctx, name, acts, weights, scores) -> str:
    """Prove the head is linear in a global pooling: doubling the layer output must add w . pool(A)."""
    module = ctx.model.named_layers()[name]
    handle = module.register_forward_hook(lambda _m, _i, out: out * 2)
    try:
        with torch.no_grad():
            doubled = ctx.score(ctx.forward(ctx.x))
    finally:
        handle.remove()
    added = doubled - scores
    tolerance = 1e-3 * (added.abs() + scores.abs()).clamp_min(1e-6)
    for pooling, pooled in (("average", acts.flatten(2).mean(2)), ("max", acts.flatten(2).amax(2))):
        if ((weights * pooled).sum(1) - added).abs().le(tolerance).all():
            return pooling
    raise XAIError(f"CAM needs global average or max pooling followed by one linear layer after layer '{name}'",
                   "use gradcam, or pick the layer before the pooling with --layer")


class GradCAM(Method):
    name, title, family = "gradcam", "Grad-CAM", "cam"
    signed, needs_layers = False, True
    reference = "Selvaraju et al. 2017"

    def run(self, ctx, **_):
        return gradcam(ctx)


class GradCAMpp(Method):
    name, title, family = "gradcampp", "Grad-CAM++", "cam"
    signed, needs_layers = False, True
    reference = "Chattopadhyay et al. 2018"

    def run(self, ctx, **_):
        name, acts, grads, _ = layer_activations_and_gradients(ctx)
        # Pixel weights alpha from the closed form with an exponential head (Chattopadhyay et al., eq. 19);
        # the exp(score) factor is a positive constant per sample and is left out.
        g2 = grads.pow(2)
        denominator = 2 * g2 + (acts * grads.pow(3)).flatten(2).sum(2)[..., None, None, None]
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * F.relu(grads)).flatten(2).sum(2)[..., None, None, None]
        cam = F.relu((weights * acts).sum(1, keepdim=True))
        return upsample(cam, ctx.x), {"layer": name, "layer_shape": list(acts.shape[1:])}


class GuidedGradCAM(Method):
    name, title, family = "guided-gradcam", "Guided Grad-CAM", "cam"
    needs_layers = True
    reference = "Selvaraju et al. 2017"

    def cost(self, params):
        return {"forward": 2, "backward": 2}

    def run(self, ctx, **_):
        cam, info = gradcam(ctx)
        return modified_gradient(ctx, "guided") * cam, info


register(CAM)
register(GradCAM, ("grad-cam",))
register(GradCAMpp, ("gradcam++", "grad-cam++"))
register(GuidedGradCAM, ("guided-grad-cam",))
