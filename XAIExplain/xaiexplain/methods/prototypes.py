"""Prototype networks explained by their own parts (ad-hoc, ProtoPNet / PIP-Net): "this region looks like
these prototypes".

A network qualifies when it holds a prototype head: a module with a ``similarity`` submodule that maps a
latent grid to one similarity map per prototype (N, P, *grid), a ``last_layer`` (P -> classes, no bias), and
the buffers ``prototype_class`` and ``enabled`` (``synthlesion.prototype_model.PrototypeHead``; its
``nearest_*`` buffers, where present, hold what each prototype was pushed onto).

``prototypes`` maps one prototype's similarity on the input grid (default: the one that adds most to the
target class, similarity x weight); ``info["prototypes"]`` ranks the ``top`` prototypes by what they add, with
their class, weights, peak cell and nearest training patches. ``disable`` lists prototypes to switch off
(PIP-Net's correction of a shortcut prototype): the ranking and the default map then describe the corrected
network, and ``info`` gives the prediction both ways. The network itself is left as it was. A head that does
not compute ProtoPNet's linear layer of the prototypes' largest similarities is refused.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..core.models import prediction
from ..core.targets import ClassTarget
from ..core.volume import Volume
from ..errors import XAIError
from .base import Method, register
from .machinery.layer_grid import layer_axes, upsample

SHOWN = 3  # prototypes whose nearest patches go with the map (io.nearest draws them)
# where an axis code (MONAI's: the direction the axis runs to) points in ITK's LPS space
LPS_OF = {"R": (-1, 0, 0), "L": (1, 0, 0), "A": (0, -1, 0), "P": (0, 1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def prototype_head(model) -> tuple[str, torch.nn.Module]:
    """(name, module) of a loaded model's prototype head, or a refusal."""
    for name, module in model.named_layers().items():
        if all(hasattr(module, a) for a in ("similarity", "last_layer", "prototype_class", "enabled")):
            return name, module
    raise XAIError("the network has no prototype layer (a prototype network's head: similarity maps, "
                   "prototype classes and a last layer)", "use a post-hoc method (gradcam, gradient, lrp), or "
                   "feature-map to browse a layer's channels")


@contextmanager
def disabled(head: torch.nn.Module, indices):
    """``head`` with the prototypes ``indices`` switched off for the duration, as it was afterwards."""
    saved = head.enabled.clone()
    try:
        head.enabled[list(indices)] = 0
        yield head
    finally:
        head.enabled.copy_(saved)


def _checked_indices(value, count: int) -> list[int]:
    """The prototypes ``disable`` names: a number, a list of them, or comma-separated text (the panel's field)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",") if isinstance(value, str) else [value]
    indices = [int(i) if isinstance(i, str) and i.strip().isdigit() else i for i in items]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in indices):
        raise XAIError(f"prototypes.disable={value!r} is not a list of prototypes",
                       f"give prototype numbers from 0 to {count - 1}, e.g. [3] or [3, 5] (in the panel: 3,5)")
    return sorted(set(indices))


def nearest_patches(head, p: int) -> np.ndarray:
    """The input patches prototype ``p`` of a prototype ``head`` was pushed onto, nearest first: (K, C, S, S, S)
    in model space (none: shape (0,)), from its ``nearest_*`` buffers."""
    sources = getattr(head, "nearest_sources", None)
    if sources is None:
        return np.zeros((0,), np.float32)
    kept = sources[p, :, 0] >= 0
    return head.nearest_patches[p][kept].float().cpu().numpy()


def nearest_patch_volumes(model, p: int) -> list:
    """Prototype ``p``'s nearest training patches as volumes (``core.volume.Volume``, nearest first) with the
    model space's voxel size and axes (its preprocessing's spacing and orientation), each centred on the origin:
    the patches' place in their training cases is not known here, only their case and cell."""
    _, head = prototype_head(model)
    count = int(head.enabled.numel())
    if not 0 <= p < count:
        raise XAIError(f"prototype {p} is out of range: the network has {count}", f"give 0 to {count - 1}")
    spec = model.preprocessing
    spacing = np.asarray(spec.spacing or (1.0, 1.0, 1.0), np.float64)
    direction = np.array([LPS_OF[c] for c in spec.orientation], np.float64).T if spec.orientation else np.eye(3)
    patches = nearest_patches(head, p)
    origin = -direction @ (spacing * (np.asarray(patches.shape[2:]) - 1) / 2) if len(patches) else np.zeros(3)
    return [Volume(patch.astype(np.float32), spacing, origin, direction, [f"prototype {p} nearest {rank + 1}"])
            for rank, patch in enumerate(patches)]


def _nearest(head, p: int) -> list[dict]:
    sources = getattr(head, "nearest_sources", None)
    if sources is None:
        return []
    distances = head.nearest_distances[p]
    return [{"case": int(s[0]), "cell": [int(c) for c in s[1:]], "distance": float(d)}
            for s, d in zip(sources[p], distances) if int(s[0]) >= 0]


def _prediction(ctx, output: torch.Tensor) -> dict:
    return prediction(output, ctx.model.class_names, ctx.model.output_kind)


class Prototypes(Method):
    name, title = "prototypes", "A prototype's similarity map; prototypes ranked by what they add (ProtoPNet)"
    family, signed, needs_gradients, segmentation, through_windows = "prototype", False, False, False, False
    kind = "ad-hoc"
    defaults = {"prototype": None, "disable": "", "top": 10}  # disable: [3, 5], or "3,5"
    bounds = {"prototype": (0, None), "top": (1, None)}
    reference = "Chen et al. 2019 (ProtoPNet); Nauta et al. 2023 (PIP-Net)"

    def cost(self, params):
        return {"forward": 2 if params.get("disable") else 1, "backward": 0}  # the latent's axes: from the graph

    def run(self, ctx, prototype, disable, top):
        if ctx.x.shape[0] != 1:
            raise XAIError("prototypes explains one input at a time", "give one volume")
        name, head = prototype_head(ctx.model)
        count = int(head.enabled.numel())
        if prototype is not None and prototype >= count:
            raise XAIError(f"prototypes.prototype={prototype} is out of range: the network has {count} prototypes",
                           f"give a prototype from 0 to {count - 1}, or none for the one adding most")
        off = _checked_indices(disable, count) if disable not in (None, [], "") else []
        if not isinstance(ctx.target, ClassTarget):
            raise XAIError("prototypes explains one class's score", "give a class as the target, without --versus")
        target = int(ctx.target.indices(ctx.reference)[0])
        layer = f"{name}.similarity" if name else "similarity"
        seen: dict = {}

        def keep(key):
            def hook(_module, inputs, output):
                seen[key] = (inputs[0], output)  # returns None: the pass goes on unchanged
            return hook

        handles = [head.similarity.register_forward_hook(keep("similarity")), head.register_forward_hook(keep("head"))]
        try:
            with torch.enable_grad():
                x = ctx.x.detach().requires_grad_(True)
                output = ctx.forward(x)
                latent, maps = seen["similarity"]  # (1, D, *grid), (1, P, *grid): cell by cell, same axes
                axes = layer_axes(ctx, layer, x, latent)
        finally:
            for handle in handles:
                handle.remove()
        maps, raw = maps.detach(), maps.detach().flatten(2).amax(2)[0]
        _check_head(head, raw, seen["head"][1].detach())
        enabled = head.enabled.clone()
        enabled[off] = 0  # the corrected network: what the ranking and the default map describe
        weights = head.last_layer.weight.detach()  # (classes, P)
        adds = raw * enabled * weights[target]
        order = torch.argsort(adds.masked_fill(enabled == 0, float("-inf")), descending=True)  # disabled: last
        chosen = int(order[0]) if prototype is None else int(prototype)
        classes = ctx.model.class_names or [str(i) for i in range(weights.shape[0])]
        ranking = []
        for rank, p in enumerate(order[:top].tolist()):
            cell = torch.unravel_index(maps[0, p].argmax(), maps.shape[2:])
            ranking.append({"prototype": p, "class": classes[int(head.prototype_class[p])],
                            "similarity": float(raw[p]), "weight": float(weights[target, p]), "adds": float(adds[p]),
                            "weights": {c: float(w) for c, w in zip(classes, weights[:, p])},
                            "enabled": bool(enabled[p] > 0), "peak_cell": [int(c) for c in cell],
                            "nearest": _nearest(head, p)})
            patches = nearest_patches(head, p) if rank < SHOWN else ()
            if len(patches):  # the middle slice along the third axis, for the picture
                ranking[-1]["nearest_slices"] = np.round(patches[:, 0, :, :, patches.shape[-1] // 2], 4).tolist()
        info = {"prototype": chosen, "rank": int((order == chosen).nonzero()[0]) + 1, "prototypes": ranking,
                "prototype_count": count, "layer": layer,
                "layer_shape": list(maps.shape[1:]), "axes": axes.describe(), "axes_check": axes.checked,
                "model_orientation": ctx.model.preprocessing.orientation,
                "prediction": _prediction(ctx, output.detach())}
        if off:
            with disabled(head, off), torch.inference_mode():
                info["disabled"] = off
                info["prediction_with_disabled"] = _prediction(ctx, ctx.forward(ctx.x))
        return upsample(axes.align(maps[:, chosen:chosen + 1]), ctx.x), info


def _check_head(head, raw: torch.Tensor, logits: torch.Tensor) -> None:
    """The ranking reads the head as ProtoPNet's: the largest similarity of each prototype, times ``enabled``, then
    the linear layer. A head that computes anything else is refused (its ranking would be wrong)."""
    expected = head.last_layer(raw[None] * head.enabled).detach()
    if expected.shape != logits.shape or not torch.allclose(expected, logits, rtol=1e-4, atol=1e-5):
        raise XAIError("the prototype head does not compute its last layer of each prototype's largest similarity "
                       "(ProtoPNet's head): what each prototype adds cannot be read from it",
                       "use a post-hoc method (gradient, lrp), or give the head ProtoPNet's form")


register(Prototypes)
