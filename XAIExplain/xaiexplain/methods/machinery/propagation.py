"""Shared machinery of the propagation methods (LRP, DeepLIFT): see every operation the network runs.

A ``TorchFunctionMode`` sees each call the network makes: ``nn.Conv3d`` and
``F.conv3d`` alike, functional residual ``+``, ``torch.cat`` skips, norms,
pooling, upsampling. Each call falls in one of a few kinds, and a subclass gives
each kind its propagation rule (by wrapping the call in a custom autograd
function). Calls that only move values around (views, slicing, concatenation,
padding, max pooling) keep their ordinary gradient. Any other call that produces
a tensor on the path from the input raises an error naming the operation and the
layer, so a network the rules do not cover never yields a silently wrong map.

Activation modules (``nn.PReLU``, MONAI's ``Swish`` ...) are handled as a whole
through forward hooks, whatever they compute inside. ``inplace`` flags are
switched off for the duration, so a module's input is still intact after it ran,
and in-place calls (``x += y``, ``F.relu(x, inplace=True)``) are computed out of
place: their result is returned and the operand, perhaps saved for the
backward, is left as it was (networks use the returned value).
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...errors import XAIError
from . import aten
from .folding import fold_into


def _collect(*pairs) -> set:
    found = set()
    for namespace, names in pairs:
        for name in names.split():
            fn = getattr(namespace, name, None)
            if fn is not None:
                found.add(fn)
    return found


T = torch.Tensor
CONV = _collect((F, "conv1d conv2d conv3d"), (torch, "conv1d conv2d conv3d"))
CONV_T = _collect((F, "conv_transpose1d conv_transpose2d conv_transpose3d"))
LINEAR = _collect((F, "linear"))
AVERAGE = _collect((F, "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
                       "interpolate upsample upsample_nearest upsample_bilinear"),
                   (torch, "mean sum avg_pool1d adaptive_avg_pool1d"), (T, "mean sum"),
                   (torch._C._nn, "avg_pool2d avg_pool3d adaptive_avg_pool2d adaptive_avg_pool3d"))
MAXPOOL = _collect((F, "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices "
                       "max_pool3d_with_indices _max_pool1d _max_pool2d _max_pool3d adaptive_max_pool1d "
                       "adaptive_max_pool2d adaptive_max_pool3d adaptive_max_pool1d_with_indices "
                       "adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices _adaptive_max_pool1d "
                       "_adaptive_max_pool2d _adaptive_max_pool3d"),
                    (torch, "max_pool1d max_pool2d max_pool3d"))
NORM = _collect((F, "batch_norm instance_norm group_norm layer_norm"))
ADD = _collect((torch, "add sub"), (T, "add sub add_ sub_ __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__"))
MUL = _collect((torch, "mul div"), (T, "mul div mul_ div_ __mul__ __rmul__ __imul__ __truediv__ __itruediv__"))
ACTIVATION = _collect((F, "relu relu_ leaky_relu leaky_relu_ prelu elu elu_ selu celu gelu silu mish hardswish "
                          "relu6 hardtanh hardtanh_ softplus sigmoid tanh softmax"),
                      (torch, "relu relu_ sigmoid tanh prelu selu celu softmax"),
                      (T, "relu relu_ sigmoid sigmoid_ tanh tanh_ softmax"), (torch._C._nn, "gelu silu leaky_relu elu"))
# Calls that move or copy values without mixing them: their gradient routes relevance as it should.
MOVE = _collect((T, "__getitem__ view view_as reshape reshape_as flatten unflatten permute transpose contiguous "
                    "squeeze unsqueeze expand expand_as split chunk narrow select clone to float double half "
                    "type_as unbind movedim roll"),
                (torch, "cat concat concatenate stack flatten squeeze unsqueeze transpose permute reshape split "
                        "chunk narrow movedim unbind clone roll"),
                (F, "pad dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout"))
MOVE |= MAXPOOL
PRODUCT = _collect((torch, "matmul bmm einsum"), (T, "matmul bmm __matmul__ __rmatmul__"))

ACTIVATION_MODULES = (nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Softplus, nn.Hardswish, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.RReLU)
ACTIVATION_CLASS_NAMES = {"Swish", "MemoryEfficientSwish", "Mish", "MemoryEfficientMish"}  # MONAI's own


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATION_MODULES) or type(module).__name__ in ACTIVATION_CLASS_NAMES


def in_graph(value) -> bool:
    """A tensor on the path from the explained input (parameters are constants here)."""
    return (isinstance(value, torch.Tensor) and value.requires_grad and value.is_floating_point()
            and not isinstance(value, nn.Parameter))


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


def bind(names: str, args: tuple, kwargs: dict) -> dict:
    """Arguments of a call by parameter name (``names`` in the function's order)."""
    bound = dict(zip(names.split(), args))
    bound.update(kwargs)
    return bound


def reduce_to(grad: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to an operand's shape."""
    while grad.ndim > len(shape):
        grad = grad.sum(0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis, keepdim=True)
    return grad


class PropagationMode(TorchFunctionMode):
    """Dispatches every call of the network's forward pass to a handler by kind.

    Subclasses implement ``linear`` (conv, transposed conv, dense), ``average``
    (average pooling, means, interpolation), ``norm``, ``add``, ``mul`` and
    ``activation`` (functional) plus ``activation_module`` (forward hook).
    """

    method = "propagation"

    def __init__(self, network: nn.Module, x: torch.Tensor):
        super().__init__()
        self.network, self.input = network, x
        self.stack: list[tuple[str, nn.Module]] = [("", network)]
        self.hooks = []

    # -- where are we: the module stack, for rule assignment and error messages
    @property
    def layer(self) -> tuple[str, nn.Module]:
        return self.stack[-1]

    def where(self) -> str:
        name, module = self.layer
        return f"layer '{name or '<model>'}' ({type(module).__name__})"

    def unsupported(self, what: str) -> XAIError:
        fix = "use gradient or integrated-gradients for this network, or report the layer type"
        if any(name in what for name in ("max", "exp", "logsumexp")):
            fix = ("if the network writes its softmax out by hand, explain the network without that final "
                   "softmax (its logits), or " + fix)
        elif "aten::" in what:  # decomposed programs spell norms and PReLU as several primitive calls
            fix = ("export the program with torch.export.export and no run_decompositions(), whose calls the "
                   "rules cover, or " + fix)
        return XAIError(f"{self.method} has no rule for {what} in {self.where()}", fix)

    @contextmanager
    def active(self):
        """Hooks on, inplace off; everything restored afterwards, even on error."""
        switched = []
        for name, module in self.network.named_modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False
                switched.append(module)
            if name:
                self.hooks.append(module.register_forward_pre_hook(self._enter(name)))
                self.hooks.append(module.register_forward_hook(self._leave, always_call=True))
        try:
            with self:
                yield self
        finally:
            for hook in self.hooks:
                hook.remove()
            self.hooks.clear()
            for module in switched:
                module.inplace = True

    def _enter(self, name):
        def hook(module, args):
            self.stack.append((name, module))
        return hook

    def _leave(self, module, args, output):
        if self.stack[-1][1] is not module:
            return None
        self.stack.pop()
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        if is_activation(module) and inputs and in_graph(inputs[0]) and isinstance(output, torch.Tensor):
            with self._paused():
                return self.activation_module(module, inputs[0], output)
        return None

    @contextmanager
    def _paused(self):
        # Hooks run outside __torch_function__, so the mode is still on: step out of it.
        from torch.overrides import _pop_mode_temporarily
        with _pop_mode_temporarily():
            yield

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_activation(self.layer[1]) or not any(in_graph(t) for t in tensors_in(list(args) + list(kwargs.values()))):
            return func(*args, **kwargs)  # inside an activation module (handled whole), or off the input's path
        if aten.packet(func) is not None:  # a torch.export program's call: as its functional twin
            restated = aten.restate(func, args, kwargs)
            if restated is not None:
                fn, fn_args, fn_kwargs, finish = restated
                return finish(self.__torch_function__(fn, types, fn_args, fn_kwargs))
        key = aten.packet(func)
        if func in CONV or func in CONV_T or func in LINEAR:
            return self.linear(func, args, kwargs)
        if func in NORM:
            return self.norm(func, args, kwargs)
        if func in AVERAGE:
            return self.average(func, args, kwargs)
        if func in ADD:
            return self.add(func, args, kwargs)
        if func in MUL:
            return self.mul(func, args, kwargs)
        if func in PRODUCT:
            return self.product(func, args, kwargs)
        if func in ACTIVATION or key in aten.ACTIVATION:
            return self.activation(func, args, kwargs)
        if func in MAXPOOL:
            return self.maxpool(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in MOVE or key in aten.MOVE:
            return self.moved(args, out)
        if not any(in_graph(t) for t in tensors_in(out)):
            return out
        raise self.unsupported(f"'{getattr(func, '__qualname__', getattr(func, '__name__', func))}'")

    def maxpool(self, func, args, kwargs):
        return func(*args, **kwargs)

    def product(self, func, args, kwargs):
        """A matrix product or einsum on the input's path (attention): a rule of the subclass's, else refused."""
        raise self.unsupported(f"a product of feature maps ('{getattr(func, '__name__', func)}')")

    def moved(self, args, out):
        """Called with the result of a call that only moves values (a view, a slice ...)."""
        return out

    def match_rule(self, rules: dict | None, name: str, module: nn.Module):
        """A user's per-layer rule: by module name pattern first, then by module type."""
        for key, rule in (rules or {}).items():
            if isinstance(key, str) and fnmatch.fnmatchcase(name, key):
                return rule
        for key, rule in (rules or {}).items():
            if isinstance(key, type) and isinstance(module, key):
                return rule
        return None


def linear_call(func, args, kwargs):
    """(input, weight, bias, op) for a conv / transposed conv / dense call; ``op`` recomputes it."""
    if func in LINEAR:
        b = bind("input weight bias", args, kwargs)
        return b["input"], b["weight"], b.get("bias"), LinearOp("linear", {})
    transposed = func in CONV_T
    names = ("input weight bias stride padding output_padding groups dilation" if transposed
             else "input weight bias stride padding dilation groups")
    b = bind(names, args, kwargs)
    dims = b["weight"].ndim - 2

    def tup(value, default):
        value = default if value is None else value
        return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]

    padding = b.get("padding", 0)
    if isinstance(padding, str):
        kernel = b["weight"].shape[2:]
        dilation = tup(b.get("dilation"), 1)
        if padding == "valid":
            padding = 0
        elif padding == "same" and all((d * (k - 1)) % 2 == 0 for d, k in zip(dilation, kernel)):
            padding = [d * (k - 1) // 2 for d, k in zip(dilation, kernel)]
        else:
            raise XAIError(f"padding='{padding}' with an even kernel is not supported by the propagation rules",
                           "pad explicitly (F.pad) before the convolution")
    spec = {"stride": tup(b.get("stride"), 1), "padding": tup(padding, 0), "dilation": tup(b.get("dilation"), 1),
            "transposed": transposed, "output_padding": tup(b.get("output_padding"), 0),
            "groups": int(b.get("groups", 1) or 1)}
    return b["input"], b["weight"], b.get("bias"), LinearOp("conv", spec)


class LinearOp:
    """A conv / transposed conv / dense layer as two functions of (input, weight): forward and input-gradient."""

    def __init__(self, kind: str, spec: dict):
        self.kind, self.spec = kind, spec

    def forward(self, x, weight, bias=None):
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        s = self.spec
        return torch.ops.aten.convolution.default(x, weight, bias, s["stride"], s["padding"], s["dilation"],
                                                  s["transposed"], s["output_padding"], s["groups"])

    def input_grad(self, grad, x, weight):
        """Transpose of the layer applied to ``grad`` (what autograd would give, without a forward pass)."""
        if self.kind == "linear":
            return grad @ weight
        s = self.spec
        grads = torch.ops.aten.convolution_backward.default(
            grad, x, weight, None, s["stride"], s["padding"], s["dilation"], s["transposed"], s["output_padding"],
            s["groups"], [True, False, False])
        return grads[0]

    def scale_outputs(self, weight, bias, scale, shift):
        """Weights and bias of this layer followed by a per-channel affine map (a merged BatchNorm)."""
        transposed = self.kind == "conv" and self.spec["transposed"]
        return fold_into(weight, bias, scale, shift, transposed=transposed,
                         groups=self.spec["groups"] if transposed else 1)


def vjp(fn, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of ``fn`` at ``x`` (recomputes ``fn``; used for cheap parameter-free ops)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xx), xx, grad)
    return g


def batch_norm_in_eval(args, kwargs) -> dict:
    """A ``batch_norm`` call's arguments by name; refuses training mode (batch statistics)."""
    b = bind("input running_mean running_var weight bias training momentum eps", args, kwargs)
    if b.get("training", False):
        raise XAIError("BatchNorm is in training mode", "put the model in eval mode (model.eval())")
    return b


def norm_affine(func, args, kwargs):
    """A normalisation with its standard deviation frozen: ``y = scale * (x - mean) + beta``.

    Returns (x, scale, shift, center): ``y = scale * x + shift`` with the input's own
    statistics (BatchNorm in eval mode: the running statistics), and ``center(g)``, the
    transpose of the centring ``x - mean(x)`` (None when the mean is a constant, as with
    running statistics).
    """
    if func is F.batch_norm:
        b = batch_norm_in_eval(args, kwargs)
        axes = None
    elif func is F.instance_norm:
        b = bind("input running_mean running_var weight bias use_input_stats momentum eps", args, kwargs)
        axes = tuple(range(2, b["input"].ndim)) if b.get("use_input_stats", True) else None
    elif func is F.group_norm:
        b = bind("input num_groups weight bias eps", args, kwargs)
        axes = "groups"
    else:  # layer_norm
        b = bind("input normalized_shape weight bias eps", args, kwargs)
        axes = tuple(range(b["input"].ndim - len(b["normalized_shape"]), b["input"].ndim))
    x, eps = b["input"], b.get("eps", 1e-5)
    source = x.detach()
    shape = tuple(b["normalized_shape"]) if func is F.layer_norm else (1, -1) + (1,) * (x.ndim - 2)
    groups = int(b.get("num_groups", 1) or 1)

    def grouped_mean(t):
        g = t.unflatten(1, (groups, -1))
        dims = tuple(range(2, g.ndim))
        return g, g.mean(dims, keepdim=True)

    if axes is None:
        mean, var = b["running_mean"].view(shape), b["running_var"].view(shape)
        center = None
    elif axes == "groups":
        g, m = grouped_mean(source)
        dims = tuple(range(2, g.ndim))
        mean = m.expand_as(g).flatten(1, 2)
        var = g.var(dims, unbiased=False, keepdim=True).expand_as(g).flatten(1, 2)

        def center(t):
            tg, tm = grouped_mean(t)
            return (tg - tm).flatten(1, 2)
    else:
        mean, var = source.mean(axes, keepdim=True), source.var(axes, unbiased=False, keepdim=True)

        def center(t):
            return t - t.mean(axes, keepdim=True)
    scale = torch.rsqrt(var + eps)
    weight, bias = b.get("weight"), b.get("bias")
    if weight is not None:
        scale = scale * weight.view(shape)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.view(shape)
    return x, scale, shift, center
