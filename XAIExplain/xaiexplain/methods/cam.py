"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM.

The layer is found in the same forward pass that computes the map: hooks on every submodule record
spatial outputs in completion order (overridable by module name). For a classifier the layer is the last
spatial feature map; for a segmentation network it is the last one *before the output head* (see
:func:`choose_layer`), since a CAM of the output itself only repeats the output. Maps are brought onto the
model input grid by :mod:`.machinery.layer_grid`: the layer's axes are checked against the input's (from
the autograd graph, or with a few probe passes when it holds an operation that may reorder axes), permuted /
flipped back when the model reorders them and refused when it scrambles them; then interpolated (trilinear,
align_corners=False). Unlike MONAI's default CAM post-processing, maps are never min-max inverted: larger
means more evidence for the target. The cost model counts the graph check; a probe adds ``PROBES`` partial
backward passes, which ``ctx.passes`` records.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import XAIError
from .backprop import modified_gradient
from .base import Method, register
from .machinery.layer_grid import Axes, capture_layer, layer_axes, upsample

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class LayerPass:
    """A layer's activations and the gradient of the target score with respect to them."""

    name: str
    acts: torch.Tensor  # (N, K, *layer grid)
    grads: torch.Tensor
    scores: torch.Tensor
    choice: str  # why this layer: "given", or how it was chosen automatically
    axes: Axes  # how the layer grid lies on the input grid


def _pointwise(module: nn.Module, in_shape, out: torch.Tensor) -> bool:
    """Acts on each voxel alone (activation, softmax, normalisation, dropout, identity, 1x1 stride-1 conv)."""
    if in_shape is not None and tuple(out.shape[2:]) != tuple(in_shape[2:]):
        return False
    return _pointwise_module(module)


def _pointwise_module(module: nn.Module) -> bool:
    children = list(module.children())
    if children:
        return all(_pointwise_module(child) for child in children)
    if isinstance(module, nn.modules.conv._ConvNd):
        return all(k == 1 for k in module.kernel_size) and all(s == 1 for s in module.stride)
    if isinstance(module, nn.MultiheadAttention):
        return False
    return (isinstance(module, _NORMS + (nn.Identity, nn.modules.dropout._DropoutNd))
            or type(module).__module__.endswith("activation"))  # torch's and MONAI's activation modules


def choose_layer(ctx, captured: list, output: torch.Tensor) -> tuple[str, torch.Tensor, str]:
    """(name, activations, reason) of the layer to explain, from the spatial outputs of one forward pass.

    A given layer (ctx.layer) is used as it is. A classifier gets its last spatial feature map. A
    segmentation network's last spatial outputs are its head: the output itself and its wrappers, the
    logits (any module with as many channels as the output has classes, at any resolution, e.g. MONAI
    UNet's last transposed conv and residual unit), softmax / sigmoid and other activations, normalisation
    and 1x1 convs (e.g. SegResNet's norm-ReLU-1x1 conv_final, DynUNet's output_block). Walking back from
    the end over these, the first other module is the layer: the last feature map that feeds the head.
    Once a 1x1 conv of the head has been passed, a module with as many channels as classes counts as head
    only where it makes them from another channel count (VNet's 5x5 conv to the classes before its 1x1
    conv), so decoder features that happen to have as many channels as there are classes are not taken
    for logits. A module called again later in the pass (shared) is passed over: its name would not
    identify this output.
    """
    if ctx.layer is not None:
        name, acts, _ = captured[-1]
        return name, acts, "given"
    if output.ndim != ctx.x.ndim or output.shape[2:].numel() <= 1:
        name, acts, _ = captured[-1]
        return name, acts, "automatic: last spatial feature map"
    modules = ctx.model.named_layers()
    classes, head, projected = output.shape[1], [], False
    for position in range(len(captured) - 1, -1, -1):
        name, acts, in_shape = captured[position]
        pointwise = _pointwise(modules[name], in_shape, acts)
        logits = acts.shape[1] == classes and (not projected or in_shape is None or in_shape[1] != classes)
        if acts is output or pointwise or logits:
            head.append(name)
            projected = projected or (pointwise and any(isinstance(m, nn.modules.conv._ConvNd)
                                                        for m in modules[name].modules()))
        elif all(entry[0] != name for entry in captured[position + 1:]):
            # Name the head by its outermost modules, leaving out the containers of the chosen layer.
            parts = [h for h in dict.fromkeys(head) if modules[name] not in set(modules[h].modules())]
            inner = {id(m) for h in parts for m in list(modules[h].modules())[1:]}
            shown = ", ".join(sorted(h for h in parts if id(modules[h]) not in inner))
            return name, acts, f"automatic: last spatial feature map before the output head ({shown})"
    raise XAIError("the segmentation network has no spatial feature map before its output head",
                   "give a layer with --layer, or use a gradient method")


def layer_activations_and_gradients(ctx) -> LayerPass:
    """The chosen layer's activations and d score / d A, from one forward and one partial backward."""
    with torch.enable_grad():
        x = ctx.x.detach().requires_grad_(True)  # keeps a graph even for frozen parameters
        with capture_layer(ctx, ctx.layer) as captured:
            output = ctx.forward(x)
            scores = ctx.score(output)
        if not captured:
            raise XAIError("the model produced no spatial feature map to explain",
                           "CAM methods need a convolutional layer; use a gradient method")
        name, acts, choice = choose_layer(ctx, captured, output)
        del captured  # the other layers' outputs are not needed past this point
        axes = layer_axes(ctx, name, x, acts)  # any probe runs through this graph, kept for the next pass
        (grads,) = torch.autograd.grad(scores.sum(), acts)
    ctx.passes["backward"] += int(x.shape[0])
    return LayerPass(name, acts.detach(), grads.detach(), scores.detach(), choice, axes)


def on_input(ctx, layer: LayerPass, cam: torch.Tensor, **extra) -> tuple[torch.Tensor, dict]:
    """A layer-grid map on the model input grid, with the layer's axes put in the input's order and direction."""
    info = {"layer": layer.name, "layer_shape": list(layer.acts.shape[1:]), "layer_choice": layer.choice,
            "axes": layer.axes.describe(), "axes_check": layer.axes.checked, **extra}
    return upsample(layer.axes.align(cam), ctx.x), info


def gradcam(ctx) -> tuple[torch.Tensor, dict]:
    layer = layer_activations_and_gradients(ctx)
    weights = layer.grads.flatten(2).mean(2)[..., None, None, None]
    cam = F.relu((weights * layer.acts).sum(1, keepdim=True))
    return on_input(ctx, layer, cam)


class CAM(Method):
    name, title, family = "cam", "CAM (global pooling + linear head)", "cam"
    needs_layers, segmentation = True, False
    reference = "Zhou et al. 2016"

    def cost(self, params):
        return {"forward": 2, "backward": 1}

    def run(self, ctx, **_):
        layer = layer_activations_and_gradients(ctx)
        # Behind global (average or max) pooling + linear, the gradient summed over space is the class
        # weight of each channel; CAM is then w . A(v) at every position.
        weights = layer.grads.flatten(2).sum(2)
        pooling = _check_linear_pooling_head(ctx, layer.name, layer.acts, weights, layer.scores)
        cam = (weights[..., None, None, None] * layer.acts).sum(1, keepdim=True)
        return on_input(ctx, layer, cam, pooling=pooling)


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

    def cost(self, params):
        return {"forward": 1, "backward": 1}

    def run(self, ctx, **_):
        return gradcam(ctx)


class GradCAMpp(Method):
    name, title, family = "gradcampp", "Grad-CAM++", "cam"
    signed, needs_layers = False, True
    reference = "Chattopadhyay et al. 2018"

    def cost(self, params):
        return {"forward": 1, "backward": 1}

    def run(self, ctx, **_):
        layer = layer_activations_and_gradients(ctx)
        acts, grads = layer.acts, layer.grads
        # Pixel weights alpha from the closed form with an exponential head (Chattopadhyay et al., eq. 19);
        # the exp(score) factor is a positive constant per sample and is left out.
        g2 = grads.pow(2)
        denominator = 2 * g2 + (acts * grads.pow(3)).flatten(2).sum(2)[..., None, None, None]
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * F.relu(grads)).flatten(2).sum(2)[..., None, None, None]
        cam = F.relu((weights * acts).sum(1, keepdim=True))
        return on_input(ctx, layer, cam)


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
