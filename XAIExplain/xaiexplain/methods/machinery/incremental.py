"""Incremental inference: score local changes of one volume by recomputing only what they reach.

An occluded window changes the input inside one box. A convolution's output then
changes only inside the box of cells whose receptive field meets it, and so on
layer by layer; everything outside stays as in the unperturbed pass. So the
network is traced once (torch.fx), every layer's output on the unperturbed
volume is kept, and a batch of changed boxes is pushed through the graph as
small boxes of activations (``Patch``), each layer computing its output box from
its input box plus the halo it reads. Where the graph meets a layer that mixes
the whole volume (global pooling, normalisation statistics, a linear layer,
anything unknown), the boxes are written into copies of the kept outputs and the
rest of the graph runs as usual. Same arithmetic as the full pass, up to float
rounding (checked against it by the caller).

Each box is a batch of crops gathered from one sliding-window view of the kept
output, in the channels-last layout the convolutions run fastest in. On the demo
model at 64^3 with 16^3 windows, 22 of its 25 layers run on boxes and patch
occlusion takes 2-2.6x less time than with full volumes on a CPU
(``benchmarks/bench_perturbation.py``). The idea follows Nakandala et al. 2019,
"Incremental and approximate inference for faster occlusion-based deep CNN
explanations" (Krypton).
"""
from __future__ import annotations

import operator
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ...core.conversion import passes_input
from ...core.models import model_output
from . import aten

# Layers that act voxel by voxel: their output box is their input box.
POINTWISE_ALWAYS = (nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
                    nn.Tanh, nn.Softplus, nn.Hardtanh, nn.ReLU6, nn.Identity)
POINTWISE_MODULES = POINTWISE_ALWAYS + (nn.Dropout, nn.Dropout3d, nn.AlphaDropout,  # these in eval mode only
                                        nn.modules.batchnorm._BatchNorm)
POINTWISE_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.elu, F.gelu, F.silu, F.prelu, torch.sigmoid, torch.tanh,
                       F.sigmoid, F.tanh, F.relu6, F.hardtanh, F.softplus, F.mish}
BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
BINARY_METHODS = {"add", "sub", "mul", "__add__", "__sub__", "__mul__"}
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
ATEN = torch.ops.aten
ATEN_COPIES = aten.packets("clone contiguous alias lift_fresh_copy")
ATEN_DROPOUT = aten.packets("dropout feature_dropout alpha_dropout feature_alpha_dropout")
ATEN_BOXED = aten.packets("convolution _convolution conv1d conv2d conv3d max_pool1d max_pool2d max_pool3d "
                          "max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices avg_pool1d "
                          "avg_pool2d avg_pool3d batch_norm _native_batch_norm_legit_no_training add add_ sub sub_ "
                          "mul mul_ div div_ cat concat") | aten.ACTIVATION | ATEN_COPIES | ATEN_DROPOUT
# What the layers above are (a module's class), read from the graph alone: see local_share()
BOXED_MODULES = POINTWISE_MODULES + (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd,
                                     nn.modules.pooling._AvgPoolNd)
BOXED_FUNCTIONS = POINTWISE_FUNCTIONS | BINARY_FUNCTIONS | {torch.cat, operator.getitem}
BOXED_METHODS = POINTWISE_METHODS | BINARY_METHODS
# Normalisations over the whole volume: per channel an affine map of their input whose scale and shift come from
# the volume's statistics. Approximate scoring keeps them at the unperturbed volume's (a box moves them little).
NORM_MODULES = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
ATEN_NORMS = aten.packets("instance_norm group_norm native_group_norm")
_SHARES = weakref.WeakKeyDictionary()


def local_share(network: nn.Module, frozen_norms: bool = False) -> float:
    """The share of ``network``'s layers that can run on boxes: those the input reaches through layers with a
    box rule only (``frozen_norms``: normalisations too). Read from the traced graph, without a pass; an upper
    bound (a box can still grow to the whole grid, or a rule refuse its arguments); 0 where the network cannot
    be traced."""
    shares = _SHARES.setdefault(network, {})
    if frozen_norms not in shares:
        try:
            module = network if isinstance(network, torch.fx.GraphModule) else torch.fx.symbolic_trace(network)
        except Exception:  # noqa: BLE001 - untraceable: nothing runs on boxes
            shares[frozen_norms] = 0.0
            return 0.0
        modules, boxed, shapes, layers, local = dict(module.named_modules()), set(), set(), 0, 0
        for node in module.graph.nodes:
            inputs = node.all_input_nodes
            if node.op == "placeholder":
                boxed.add(node)
            elif _reads_shape(node) or (inputs and all(n in shapes for n in inputs)):
                shapes.add(node)  # arithmetic on sizes (a traced program's checks): not a layer
            elif node.op not in ("output", "get_attr"):
                layers += 1
                if any(n in boxed for n in inputs) and (_has_box_rule(node, modules) or
                                                        frozen_norms and _is_norm(node, modules)):
                    boxed.add(node)
                    local += 1
        shares[frozen_norms] = local / max(layers, 1)
    return shares[frozen_norms]


def _is_norm(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], NORM_MODULES)
    return node.op == "call_function" and (aten.packet(node.target) in ATEN_NORMS or
                                           node.target in (F.instance_norm, F.group_norm))


def _affine(inputs: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (scale, shift) with ``output = scale * inputs + shift`` on one volume (1, C, *grid): exact for
    a normalisation by that volume's own statistics, fitted by least squares."""
    x, y = inputs[0].flatten(1).double(), output[0].flatten(1).double()
    dx, dy = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    scale = (dx * dy).mean(1) / (dx * dx).mean(1).clamp(min=1e-30)
    shift = y.mean(1) - scale * x.mean(1)
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    return scale.to(inputs.dtype).view(shape), shift.to(inputs.dtype).view(shape)


def _reads_shape(node) -> bool:
    return (node.op == "call_method" and node.target in ("size", "dim")) or \
        (node.op == "call_function" and node.target is getattr and node.args[1:] in (("shape",), ("ndim",)))


def _has_box_rule(node, modules) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return passes_input(module) or (isinstance(module, BOXED_MODULES) and
                                        not isinstance(module, nn.modules.conv._ConvTransposeNd))
    if node.op == "call_function":
        return node.target in BOXED_FUNCTIONS or aten.packet(node.target) in ATEN_BOXED
    return node.op == "call_method" and node.target in BOXED_METHODS


class Base:
    """One layer's output on the unperturbed volume (1, C, *grid), with padded copies laid out for cropping."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.grid = tuple(tensor.shape[2:])
        self._padded = {}

    def crops(self, starts: torch.Tensor, size, fill: float) -> torch.Tensor:
        """Sample b's crop (B, C, *size) at ``starts[b]``; positions outside the grid hold ``fill``.

        One gather from a sliding-window view, channels last: no copy per sample."""
        dims = len(size)
        margin = max(0, -int(starts.min()), int((starts + torch.tensor(size) - torch.tensor(self.grid)).max()))
        key = (margin, fill)
        if key not in self._padded:
            padded = F.pad(self.tensor[0], (margin,) * (2 * dims), value=fill) if margin else self.tensor[0]
            self._padded = {key: padded.movedim(0, -1).contiguous()}  # (*grid, C); one kept per layer
        view = self._padded[key]
        for d, n in enumerate(size):
            view = view.unfold(d, n, 1)  # (*positions, C, *size)
        view = view.permute(*range(dims), *range(dims + 1, 2 * dims + 1), dims)  # (*positions, *size, C)
        index = tuple((starts[:, d] + margin).to(view.device) for d in range(dims))
        return view[index].movedim(-1, 1)  # (B, C, *size), channels-last in memory


class Patch:
    """A batch of activations that equal ``base`` outside one box per sample.

    ``values`` (B, C, *size) holds sample b's activation on the box starting at ``starts[b]``
    (a (B, D) integer tensor on the CPU); every box lies inside the grid.
    """

    __slots__ = ("values", "starts", "base")

    def __init__(self, values: torch.Tensor, starts: torch.Tensor, base: Base | None):
        self.values, self.starts, self.base = values, starts, base

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.values.shape[2:])

    @property
    def ndim(self) -> int:
        return self.values.dim()

    @property
    def grid(self) -> tuple[int, ...]:
        return self.base.grid

    def with_values(self, values: torch.Tensor) -> "Patch":
        return Patch(values, self.starts, self.base)

    def read(self, starts: torch.Tensor, size, fill: float = 0.0) -> torch.Tensor:
        """Each sample's full activation on the box ``starts`` + ``size`` (B, C, *size); ``fill`` outside the grid."""
        size = tuple(size)
        if size == self.size and torch.equal(starts, self.starts):
            return self.values
        out = self.base.crops(starts, size, fill)
        # where the sample's own box overlaps, its values replace the unperturbed ones
        lo = torch.maximum(starts, self.starts)
        hi = torch.minimum(starts + torch.tensor(size), self.starts + torch.tensor(self.size))
        for b, (low, high, begin, mine) in enumerate(zip(lo.tolist(), hi.tolist(), starts.tolist(),
                                                          self.starts.tolist())):
            if all(h > l for l, h in zip(low, high)):
                out[(b, slice(None), *[slice(l - a, h - a) for l, h, a in zip(low, high, begin)])] = \
                    self.values[(b, slice(None), *[slice(l - m, h - m) for l, h, m in zip(low, high, mine)])]
        return out

    def dense(self) -> torch.Tensor:
        """The full activations (B, C, *grid)."""
        if self.size == self.grid:
            return self.values
        return self.read(torch.zeros_like(self.starts), self.grid)


def _tuple(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _fit(lo: torch.Tensor, hi: torch.Tensor, grid) -> tuple[torch.Tensor, tuple[int, ...]]:
    """One box size for the batch covering [lo, hi] (inclusive, per sample), shifted to lie inside the grid."""
    grid_t = torch.tensor(grid)
    lo, hi = lo.clamp(min=0), torch.minimum(hi, grid_t - 1)
    size = torch.minimum((hi - lo + 1).clamp(min=1).amax(0), grid_t)
    starts = torch.minimum(lo, grid_t - size)
    return starts, tuple(int(s) for s in size)


class IncrementalNetwork:
    """Outputs of ``network`` for batches of inputs that differ from ``x`` (1, C, *grid) inside one box each.

    Raises torch.fx's error where the network cannot be traced."""

    def __init__(self, network: nn.Module, x: torch.Tensor, frozen_norms: bool = False):
        self.frozen_norms = frozen_norms  # approximate: normalisations keep the unperturbed volume's statistics
        self.affine = {}  # node name -> per-channel (scale, shift) of a frozen normalisation
        self.module = torch.fx.symbolic_trace(network) if not isinstance(network, torch.fx.GraphModule) else network
        self.modules = dict(self.module.named_modules())
        self.base = {}
        self.layers = sum(node.op not in ("placeholder", "output", "get_attr") for node in self.module.graph.nodes)
        self.local_layers = 0  # of the last call: how many layers ran on boxes
        self.stopped_at = None  # of the last call: the first layer that computed whole volumes from boxes
        with torch.inference_mode():
            self._run(x, keep=True)

    def __call__(self, values: torch.Tensor, starts) -> torch.Tensor:
        """Output for inputs equal to ``x`` except on the boxes ``starts`` (B, D) + ``values.shape[2:]``."""
        starts = torch.as_tensor(starts, dtype=torch.long).cpu().reshape(values.shape[0], -1)
        with torch.inference_mode():
            return model_output(self._run(Patch(values, starts, self.base["input"])))

    def _run(self, x, keep=False):
        env = {}
        self.local_layers, self.stopped_at = 0, None
        for node in self.module.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = x
                if keep:
                    self.base["input"] = Base(x)
                continue
            if node.op == "output":
                return torch.fx.node.map_aggregate(torch.fx.node.map_arg(node.args[0], lambda n: env[n.name]), _dense)
            if not keep and node.op == "call_module" and not node.users:
                continue  # a program's input guards: they checked the shapes on the unperturbed pass
            args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            out = self._apply(node, args, kwargs)
            if keep and self.frozen_norms and _is_norm(node, self.modules) and torch.is_tensor(args[0]):
                self.affine[node.name] = _affine(args[0], out[0] if isinstance(out, tuple) else out)
            if keep and torch.is_tensor(out):
                self.base[node.name] = Base(out)
            if isinstance(out, Patch):
                out.base = self.base[node.name]
                self.local_layers += 1
            env[node.name] = out
        raise RuntimeError("the traced graph has no output")

    def _apply(self, node, args, kwargs):
        if node.op == "call_function" and node.target is operator.getitem and isinstance(args[0], tuple):
            return args[0][args[1]]  # one output of a call that returns several (a norm's statistics ...)
        patched = []
        torch.fx.node.map_aggregate(args, lambda a: patched.append(a) if isinstance(a, Patch) else None)
        if patched:
            local = self._local(node, args, kwargs)
            if local is not None:
                return local
            self.stopped_at = self.stopped_at or node.name
        args = torch.fx.node.map_aggregate(args, _dense)
        kwargs = torch.fx.node.map_aggregate(kwargs, _dense)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return operator.attrgetter(node.target)(self.module)
        raise NotImplementedError(node.op)

    def _local(self, node, args, kwargs):
        """The layer's output as a Patch where it can be computed box by box, else None."""
        first = args[0]
        if node.name in self.affine and isinstance(first, Patch):  # a frozen normalisation: per channel affine
            scale, shift = self.affine[node.name]
            out = first.with_values(first.values * scale + shift)
            return _with_extras(node.target, out) if node.op == "call_function" else out
        if node.op == "call_module":
            module = self.modules[node.target]
            if not isinstance(first, Patch) or len(args) != 1 or kwargs:
                return None
            if passes_input(module):  # a layer marker of a converted TorchScript program
                return first.with_values(first.values)
            if isinstance(module, POINTWISE_MODULES):
                # BatchNorm and dropout act voxel by voxel only in eval mode
                return None if module.training and not isinstance(module, POINTWISE_ALWAYS) else \
                    first.with_values(module(first.values))
            if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
                return None if module.padding_mode != "zeros" else _conv(
                    first, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
            if isinstance(module, nn.modules.pooling._MaxPoolNd) and not module.return_indices:
                return _max_pool(first, module.kernel_size, module.stride, module.padding, module.dilation,
                                 module.ceil_mode)
            if isinstance(module, nn.modules.pooling._AvgPoolNd):
                return _avg_pool(first, module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                 getattr(module, "count_include_pad", True), getattr(module, "divisor_override", None))
            return None
        if node.op == "call_function" and aten.packet(node.target) is not None:
            return _aten(node.target, args, kwargs)
        if node.op == "call_function" and node.target is getattr and args[1:] == ("shape",):
            return _shape(first)
        if node.op == "call_method" and node.target == "size" and isinstance(first, Patch):
            return _shape(first)[args[1]] if len(args) > 1 else _shape(first)
        if node.op == "call_function" and node.target in POINTWISE_FUNCTIONS and isinstance(first, Patch):
            return _pointwise(node.target, args, kwargs)
        if node.op == "call_method" and node.target in POINTWISE_METHODS and len(args) == 1 and not kwargs:
            return first.with_values(getattr(first.values, node.target)())
        if node.op == "call_function" and node.target is torch.cat:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return _cat(args[0]) if dim == 1 and len(args) + len(kwargs) <= 2 else None
        binary = (node.op == "call_function" and node.target in BINARY_FUNCTIONS) or \
                 (node.op == "call_method" and node.target in BINARY_METHODS)
        if binary and len(args) == 2 and not kwargs:
            op = node.target if node.op == "call_function" else getattr(torch.Tensor, node.target)
            return _binary(op, *args)
        return None


def _pointwise(fn, args, kwargs):
    """A voxelwise call on the patch ``args[0]``; other arguments: numbers, or per-channel parameters (PReLU)."""
    rest = list(args[1:]) + list(kwargs.values())
    if all(not isinstance(a, Patch) and (not torch.is_tensor(a) or a.dim() <= 1) for a in rest):
        return args[0].with_values(fn(args[0].values, *args[1:], **kwargs))
    return None


def _aten(func, args, kwargs):
    """An ATen call of a ``torch.export`` program on boxes: as its functional twin (``aten.py``), same rules."""
    family = aten.packet(func)
    if family not in ATEN_BOXED:
        return None
    if family in (ATEN.cat, ATEN.concat):
        bound = aten.bound(func, args, kwargs)
        return _cat(bound["tensors"]) if bound.get("dim", 0) == 1 else None
    if not isinstance(args[0], Patch):
        return None
    if family in aten.ACTIVATION or family in ATEN_COPIES:
        return _pointwise(aten.out_of_place(func), args, kwargs)
    if family in ATEN_DROPOUT:
        return args[0] if aten.bound(func, args, kwargs).get("train") is False else None
    restated = aten.restate(func, args, kwargs)
    if restated is None:
        return None
    fn, fn_args, fn_kwargs, _ = restated
    out = None
    if fn in (F.conv1d, F.conv2d, F.conv3d) and not isinstance(fn_args[4], str):
        out = _conv(*fn_args)
    elif fn in (F.max_pool1d, F.max_pool2d, F.max_pool3d):
        out = _max_pool(*fn_args)
    elif fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
        out = _avg_pool(*fn_args)
    elif fn is F.batch_norm and fn_args[5] is False and fn_args[1] is not None:  # eval mode: per channel
        out = _pointwise(fn, fn_args, fn_kwargs)
    elif fn in (torch.add, torch.sub, torch.mul, torch.div):
        out = _binary(lambda a, b: fn(a, b, **fn_kwargs), *fn_args)
    return None if out is None else _with_extras(func, out)


def _with_extras(func, out):
    """``out`` as the call ``func`` returns it: alone, or first of a tuple whose other outputs (a norm's statistics,
    a pooling's indices) inference does not use (an ATen call's schema says how many; others return one)."""
    count = aten.outputs(func) if aten.packet(func) is not None else 1
    return out if count == 1 else (out,) + (None,) * (count - 1)


def _conv(patch: Patch, weight, bias, stride, padding, dilation, groups):
    if isinstance(padding, str) or any(isinstance(a, Patch) for a in (weight, bias)):
        return None
    dims = patch.ndim - 2
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    stride, dilation = _tuple(stride, dims), _tuple(dilation, dims)
    return _sliding(patch, tuple(weight.shape[2:]), stride, _tuple(padding, dims), dilation, 0.0,
                    lambda x: conv_fn(x, weight, bias, stride, 0, dilation, groups))


def _max_pool(patch: Patch, kernel, stride, padding, dilation=1, ceil_mode=False):
    if ceil_mode:
        return None
    dims = patch.ndim - 2
    kernel, pad, dilation = _tuple(kernel, dims), _tuple(padding, dims), _tuple(dilation, dims)
    stride = _tuple(stride or kernel, dims)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    return _sliding(patch, kernel, stride, pad, dilation, float("-inf"), lambda x: fn(x, kernel, stride, 0, dilation))


def _avg_pool(patch: Patch, kernel, stride, padding, ceil_mode=False, count_include_pad=True, divisor=None):
    dims = patch.ndim - 2
    kernel, pad = _tuple(kernel, dims), _tuple(padding, dims)
    stride = _tuple(stride or kernel, dims)
    if ceil_mode or divisor or (any(pad) and not count_include_pad):  # the divisor would depend on the border
        return None
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    return _sliding(patch, kernel, stride, pad, (1,) * dims, 0.0, lambda x: fn(x, kernel, stride, 0))


def _sliding(patch: Patch, kernel, stride, pad, dilation, fill, compute):
    """Output box of a sliding-window layer (convolution, pooling) computed from the input it reads."""
    reach = [d * (k - 1) for d, k in zip(dilation, kernel)]
    out_grid = tuple((n + 2 * p - r - 1) // s + 1 for n, p, r, s in zip(patch.grid, pad, reach, stride))
    stride_t, pad_t, reach_t = torch.tensor(stride), torch.tensor(pad), torch.tensor(reach)
    a = patch.starts
    lo = -((-(a + pad_t - reach_t)) // stride_t)  # first output whose window reaches the box
    hi = (a + torch.tensor(patch.size) - 1 + pad_t) // stride_t  # last output whose window starts in it
    starts, size = _fit(lo, hi, out_grid)
    if size == out_grid:  # the change reaches every output: the layer's own full pass is cheaper
        return None
    region = tuple((s - 1) * st + r + 1 for s, st, r in zip(size, stride, reach))
    return Patch(compute(patch.read(starts * stride_t - pad_t, region, fill)), starts, None)


def _union(patches):
    """One box (starts, size) holding every patch's box."""
    lo = torch.stack([p.starts for p in patches]).amin(0)
    hi = torch.stack([p.starts + torch.tensor(p.size) for p in patches]).amax(0) - 1
    return _fit(lo, hi, patches[0].grid)


def _cat(parts):
    """Channel concatenation of patches (dense and U-Net skips)."""
    if not all(isinstance(p, Patch) for p in parts) or len({p.grid for p in parts}) != 1:
        return None
    starts, size = _union(parts)
    return Patch(torch.cat([p.read(starts, size) for p in parts], 1), starts, None)


def _binary(op, a, b):
    if isinstance(a, Patch) and isinstance(b, Patch):
        if a.base.tensor.shape != b.base.tensor.shape:  # broadcasting between different shapes: not local
            return None
        starts, size = _union([a, b])
        return Patch(op(a.read(starts, size), b.read(starts, size)), starts, None)
    patch, other = (a, b) if isinstance(a, Patch) else (b, a)
    if isinstance(other, (int, float)):
        return patch.with_values(op(patch.values, other) if patch is a else op(other, patch.values))
    return None


def _shape(patch: Patch) -> torch.Size:
    """The shape of the full activations, without making them."""
    return torch.Size((patch.values.shape[0], patch.values.shape[1], *patch.grid))


def _dense(value):
    return value.dense() if isinstance(value, Patch) else value

