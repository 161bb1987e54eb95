"""Where a layer's grid lies on the input grid: capture a layer, check its axes, bring its map onto the input.

CAM methods compute a map on a layer's grid and interpolate it onto the model input. That is right only
when the layer's axes are the input's axes, in the same order and direction. A model that permutes,
transposes or flips its axes inside ``forward`` (a chest-CT encoder that wants (Z, Y, X), say) would get a
silently transposed map, and one that reshapes its features into another grid a meaningless one.

:func:`layer_axes` checks in two stages. First, for free, the autograd graph between the input and the
layer: when every operation on the way keeps spatial axes in order and direction by what it is
(convolutions, norms, pointwise ops, pooling, interpolation, padding, crops, concatenation over channels,
views that keep the trailing spatial shape) the correspondence holds. Otherwise (a permute, a flip, a
reshape of space, an unknown or custom op) it is measured. For a few layer positions, the gradient of the
layer output there (summed over channels) with respect to the input shows where in the input that
position looks (its effective receptive field): one partial backward pass each, through the graph the
method's own forward pass built. Its location is the centre of the part above half its peak (after a
light box smoothing). The positions sit at 1/4 and 3/4 of each layer axis in a balanced design, so the
displacement of the location between the two halves of the design measures, for every pair of a layer
axis and an input axis, how far the input location moves when the layer position moves along that axis,
as a ratio of what plain interpolation predicts (1: it follows that axis, -1: reversed, 0: unrelated).
The axis order with the largest total ratio is the correspondence; its directions come from the signs.
The method refuses when a long layer axis (4+ voxels) does not follow any input axis by at least half the
predicted distance, or when a receptive field is split into separate pieces (its centre falls in a gap):
a reshape that scrambles space. Layer axes of 2-3 voxels, whose positions sit at the borders where
receptive fields are cut off, are used when they show a direction and otherwise left as they are and
reported as unchecked. Scrambles below the probe's resolution (within a few layer voxels of a coarse
layer) can go unnoticed.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import permutations, product

import torch
import torch.nn.functional as F

from ...errors import XAIError

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
# Layer positions per axis, -1/+1 -> 1/4 and 3/4 of the axis. In 3D a half fraction of the 2^3 design
# (third column = product of the first two): four probes, each column balanced and orthogonal to the others.
_DESIGN_3D = ((-1, -1, 1), (1, -1, -1), (-1, 1, -1), (1, 1, 1))
PROBES = len(_DESIGN_3D)  # partial backward passes of a probe (when the graph cannot vouch for the axes)
_FOLLOWS = 0.5  # a layer axis follows an input axis: it moves at least half the predicted distance
_SHOWS = 0.2  # a coarse (2-3 voxel) layer axis shows a direction
_CROSS = 0.75  # ... and moves no other input axis nearly as much (relative to the followed one)
_SPLIT = 0.3  # a receptive field whose centre is below this fraction of its peak is split in pieces


# Autograd nodes (name without "Backward<n>") that keep spatial axes in order and direction whatever their
# arguments; view-like nodes, reductions, concatenation and splits are judged by shapes or dimension.
_KEEPS_AXES = re.compile(
    r"(Cudnn|Mkldnn|Miopen|Slow|Thnn)?Conv.*|(Native|Cudnn|Miopen)?(Batch|Group|Layer|Instance)Norm|"
    r".*Pool\dD(WithIndices)?|Upsample.*|ConstantPadNd|"
    r"(Reflection|Replication)Pad\dD|Slice|Expand|Clone|ToCopy|Alias|NativeDropout|Prelu(Kernel)?|Relu|"
    r"Threshold|LeakyRelu|Elu|Gelu|Silu|Mish|Hardswish|Hardsigmoid|Hardtanh|Sigmoid|Tanh|Softplus|Softmax|"
    r"LogSoftmax|Add|Sub|Mul|Div|Neg|Pow|Exp|Log|Sqrt|Rsqrt|Abs|Clamp(Min|Max)?|Maximum|Minimum|Where|"
    r"Reciprocal|Erf|Lerp|Addcmul|Addcdiv|CopySlices")
_VIEW = re.compile(r"View|UnsafeView|Reshape(Alias)?|Squeeze|Unsqueeze")
_REDUCE = re.compile(r"Mean|Sum|Amax|Amin|Std|Var|StdMean|VarMean")
_ALONG_DIM = re.compile(r"Cat|Split|SplitWithSizes")


def _design(ndim: int) -> list[tuple[int, ...]]:
    return list(_DESIGN_3D) if ndim == 3 else list(product((-1, 1), repeat=ndim))


@contextmanager
def capture_layer(ctx, layer: str | None):
    """Yield a list that fills with (name, output, input shape) for spatial outputs during a forward pass.

    Activation modules are switched to out-of-place during the pass so that a following in-place ReLU
    cannot change the captured activations.
    """
    modules = ctx.model.named_layers()
    if layer is not None and layer not in modules:
        raise XAIError(f"layer '{layer}' not found in the model",
                       f"use a module name such as: {', '.join(d['name'] for d in spatial_layers(ctx)[-5:])}")
    spatial_ndim = ctx.x.ndim
    captured: list = []
    handles, inplace = [], []
    for name, module in modules.items():
        if getattr(module, "inplace", False) is True:
            inplace.append(module)
            module.inplace = False
        if name and (layer is None or name == layer):
            def hook(_mod, inp, out, name=name):
                if isinstance(out, torch.Tensor) and out.ndim == spatial_ndim and out.shape[2:].numel() > 1:
                    first = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
                    captured.append((name, out, None if first is None else tuple(first.shape)))
            handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
        for module in inplace:
            module.inplace = True


def spatial_layers(ctx) -> list[dict]:
    """The modules producing spatial maps, in completion order: {name, channels, grid} (one forward pass of the
    first sample, without gradients)."""
    with torch.no_grad(), capture_layer(ctx, None) as captured:
        ctx.forward(ctx.x[:1])
    layers: dict[str, dict] = {}
    for name, output, _ in captured:
        layers.setdefault(name, {"name": name, "channels": int(output.shape[1]), "grid": list(output.shape[2:])})
    return list(layers.values())


def upsample(maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Trilinear (align_corners=False) interpolation of ``maps`` onto the spatial grid of ``like``."""
    if maps.shape[2:] == like.shape[2:]:
        return maps
    return F.interpolate(maps, size=like.shape[2:], mode=_MODES[maps.ndim - 2], align_corners=False)


@dataclass(frozen=True)
class Axes:
    """How a layer grid lies on the input grid."""

    order: tuple[int, ...]  # order[e]: the layer axis that runs along input axis e
    reversed: tuple[int, ...]  # layer axes that run against their input axis
    unchecked: tuple[int, ...] = ()  # coarse layer axes that showed no direction (kept as they are)
    checked: str = ""  # how: from the autograd graph, or by a probe (and why)

    def describe(self) -> str:
        identity = self.order == tuple(range(len(self.order))) and not self.reversed
        text = "verified" if identity else f"aligned: layer axes {self.order}"
        text += f", reversed {self.reversed}" if self.reversed else ""
        return text + (f"; unchecked (too coarse): layer axes {self.unchecked}" if self.unchecked else "")

    def align(self, maps: torch.Tensor) -> torch.Tensor:
        """A layer-grid map (N, C, *layer) with its axes put in the input's order and direction."""
        if self.reversed:
            maps = maps.flip([2 + d for d in self.reversed])
        return maps.permute(0, 1, *(2 + d for d in self.order))


def layer_axes(ctx, name: str, x: torch.Tensor, acts: torch.Tensor) -> Axes:
    """Which input axis each axis of layer ``name`` follows: from the autograd graph when it vouches for the
    axes, else from ``PROBES`` partial backward passes (counted in ctx.passes).

    ``x``: the input (a leaf) of the forward pass that produced ``acts`` (the layer output), graph kept.
    """
    size, grid = tuple(x.shape[2:]), tuple(acts.shape[2:])
    if len(size) != len(grid):
        raise XAIError(f"layer '{name}' has {len(grid)} spatial axes and the input {len(size)}",
                       "pick a layer with the input's spatial axes with --layer")
    reorders = _reordering_op(x, acts, len(size))
    if reorders is None:
        return Axes(tuple(range(len(size))), (), (), "graph: every operation between the input and the layer "
                    "keeps the axes")
    design = _design(len(size))
    probes = [tuple(n // 4 if sign < 0 else n - 1 - n // 4 for sign, n in zip(row, grid)) for row in design]
    found = [_looks_at(ctx, name, x, acts, probe) for probe in probes]
    where = torch.stack([f[0] for f in found])  # (K, D) input voxels
    split = min(float(f[1]) for f in found)
    if split < _SPLIT:
        raise _scrambled(name, "its receptive fields fall apart in separate pieces")
    signs = torch.tensor(design, dtype=torch.float64)
    # ratio[d, e]: displacement along input axis e between the two halves of layer axis d, over the
    # displacement plain interpolation predicts if d ran along e
    ratio = torch.zeros(len(grid), len(size), dtype=torch.float64)
    for d, n in enumerate(grid):
        if n > 1:
            moved = where[signs[:, d] > 0].mean(0) - where[signs[:, d] < 0].mean(0)
            predicted = (n - 1 - 2 * (n // 4)) * torch.tensor(size, dtype=torch.float64) / n
            ratio[d] = moved / predicted.clamp_min(1e-12)  # an input axis of length 1 does not move
    axes = _match(name, ratio, size, grid)
    return replace(axes, checked=f"probe: {reorders} between the input and the layer may reorder axes")


def _reordering_op(x: torch.Tensor, acts: torch.Tensor, ndim: int) -> str | None:
    """The first autograd node between ``x`` and ``acts`` that may reorder spatial axes; None if there is none."""
    def suspect(node) -> bool:
        stem = re.sub(r"Backward\d*$", "", type(node).__name__)
        if _KEEPS_AXES.fullmatch(stem):
            return False
        try:
            return _moves_space(node, stem, ndim)
        except (AttributeError, IndexError, RuntimeError, TypeError):  # private API (shapes, saved args): probe
            return True

    def is_input(node) -> bool:
        return getattr(node, "variable", None) is x  # x is a leaf: its AccumulateGrad node

    reaches: dict = {}
    stack = [(acts.grad_fn, False)]
    while stack:  # post-order walk of the graph (a DAG): a node is on the way if one of its inputs is
        node, done = stack.pop()
        if node is None or (node in reaches and not done):
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if is_input(node):
            reaches[node] = True
        elif done:
            reaches[node] = any(reaches.get(child, False) for child in children)
        else:
            reaches[node] = False  # visited; decided once its inputs are
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in reaches)
    for node, on_way in reaches.items():
        if on_way and not is_input(node) and suspect(node):
            return type(node).__name__
    return None


def _space(shape, ndim: int):
    """The trailing spatial shape; None for a tensor without spatial extent (e.g. (N, C) or (N, C, 1, 1, 1))."""
    return tuple(shape[-ndim:]) if len(shape) > ndim and torch.Size(shape[-ndim:]).numel() > 1 else None


def _moves_space(node, stem: str, ndim: int) -> bool:
    """Whether a shape-dependent autograd node may move spatial positions (an unknown node: True)."""
    outs = [tuple(m.shape) for m in node._input_metadata]
    ins = [tuple(child._input_metadata[i].shape) for child, i in node.next_functions if child is not None]
    spaced = [_space(shape, ndim) for shape in ins if _space(shape, ndim) is not None]
    out = _space(outs[0], ndim)
    if not spaced and all(_space(shape, ndim) is None for shape in outs):
        return False  # no spatial extent in or out (an SE gate's linear layers)
    if _VIEW.fullmatch(stem):  # leading dims merged or split, the spatial shape untouched
        return any(sp != out for sp in spaced)
    if _REDUCE.fullmatch(stem):  # over all of space, or over none of it
        return out is not None and any(sp != out for sp in spaced)
    if _ALONG_DIM.fullmatch(stem):  # concatenated or split over batch or channels
        return node._saved_dim % len(outs[0]) >= len(outs[0]) - ndim
    if stem == "Repeat":  # tiled over batch or channels only
        return any(r != 1 for r in tuple(node._saved_repeats)[-ndim:])
    if stem == "AsStrided":  # a whole contiguous view, as in-place ops on views leave behind
        size, stride = tuple(node._saved_size), tuple(node._saved_stride)
        return (len(ins) != 1 or size != ins[0] or node._saved_storage_offset != 0
                or stride != torch.empty(size, device="meta").stride())
    return True


def _looks_at(ctx, name: str, x: torch.Tensor, acts: torch.Tensor, probe) -> tuple[torch.Tensor, float]:
    """(centre of the receptive field of layer position ``probe``, in input voxels; value there / its peak).

    The field is |d sum of the layer's channels at the position / d input| of the first sample. Where every
    channel is zero there (after a ReLU) the gradient is too; the position then grows to a small box.
    """
    field = None
    for half in (0, 1, 2):
        box = (0, slice(None)) + tuple(slice(max(0, p - half), p + half + 1) for p in probe)
        try:
            (grad,) = torch.autograd.grad(acts[box].sum(), x, retain_graph=True)
        except RuntimeError:  # the layer does not depend on the input (or has no graph)
            break
        finally:
            ctx.passes["backward"] += 1
        field = grad[0].abs().sum(0).double()
        if bool(field.sum() > 0):
            break
        field = None
    if field is None:
        raise XAIError(f"layer '{name}' does not depend on the input at the probed positions, so its axes "
                       "cannot be checked", "pick another layer with --layer, or use gradient or integrated-gradients")
    smooth = field[None, None]
    pool = getattr(F, f"avg_pool{field.ndim}d")
    for axis, n in enumerate(field.shape):  # a light, separable box smoothing: strided convs leave holes
        kernel = [1] * field.ndim
        kernel[axis] = (n // 8) | 1
        smooth = pool(smooth, kernel, stride=1, padding=[k // 2 for k in kernel], count_include_pad=False)
    smooth = smooth[0, 0]
    weight = (smooth - 0.5 * smooth.max()).clamp_min(0)  # the peak region: a broad pedestal does not pull
    coords = torch.meshgrid(*[torch.arange(n, device=field.device, dtype=field.dtype) for n in field.shape],
                            indexing="ij")
    centre = torch.stack([(weight * c).sum() / weight.sum() for c in coords])
    at = smooth[tuple(int(round(float(v))) for v in centre)]
    return centre.cpu(), float(at / smooth.max())


def _match(name: str, ratio: torch.Tensor, size, grid) -> Axes:
    """The axis order that the ratios follow best, with its directions; refuse a long axis that follows none."""
    ndim = len(size)
    best, best_total = None, -1.0
    for order in permutations(range(ndim)):  # order[e] = layer axis along input axis e; identity wins ties
        total = sum(abs(float(ratio[d, e])) for e, d in enumerate(order)
                    if grid[d] > 1 and size[e] > 1 and abs(float(ratio[d, e])) >= _SHOWS)  # noise picks no order
        if total > best_total + 1e-9:
            best, best_total = order, total
    reversed_axes, unchecked = [], []
    for e, d in enumerate(best):
        if grid[d] == 1:
            continue
        follows = float(ratio[d, e]) if size[e] > 1 else 0.0
        others = max((abs(float(ratio[d, o])) for o in range(ndim) if o != e and size[o] > 1), default=0.0)
        clear = abs(follows) >= (_FOLLOWS if grid[d] > 3 else _SHOWS) and others <= _CROSS * abs(follows)
        if not clear and grid[d] <= 3:  # border positions on a 2-3 voxel axis: no evidence either way
            unchecked.append(d)
            continue
        if not clear:
            raise _scrambled(name, f"its axis {d} ({grid[d]} voxels) follows no input axis")
        if follows < 0:
            reversed_axes.append(d)
    return Axes(tuple(best), tuple(sorted(reversed_axes)), tuple(sorted(unchecked)))


def _scrambled(name: str, why: str) -> XAIError:
    return XAIError(f"the grid of layer '{name}' does not match the input's axes ({why}): the model reshapes "
                    "or scrambles space before it, so its map cannot be placed on the input",
                    "use gradient or integrated-gradients, or give --layer a layer before the reshape")
