"""Modified-backward methods: guided backpropagation and DeconvNet.

Rectifiers are found by the function they call, not by module name: a
``TorchFunctionMode`` catches every rectifying activation during the forward
pass (``nn.ReLU``/``PReLU``/``LeakyReLU`` modules, functional ``F.relu`` calls
inside ``forward``, and the ATen ops of an unflattened ``torch.export``
program) and gives it a modified backward:

* guided: ``f'(x) * max(grad, 0)`` (for ReLU: only positive gradient through
  positive inputs; for PReLU/LeakyReLU the negative slope still applies);
* deconvnet: ``max(grad, 0)`` whatever the input.

This closes the gap of MONAI's name-based replacement (which misses PReLU,
LeakyReLU and functional calls) and Captum's ``nn.ReLU``-only hooks.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from ..errors import XAIError
from .base import Method, register

_F_NAMES = ("relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "rrelu", "rrelu_", "elu", "elu_", "selu",
            "celu", "gelu", "silu", "mish", "hardswish", "relu6", "hardtanh", "hardtanh_", "softplus")
_ATEN_NAMES = ("relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "rrelu", "elu", "elu_",
               "selu", "celu", "gelu", "silu", "silu_", "mish", "hardswish", "hardtanh", "hardtanh_", "softplus",
               "relu6")


def _rectifiers() -> set:
    found = set()
    for namespace, names in ((torch.nn.functional, _F_NAMES), (torch, _F_NAMES), (torch._C._nn, _F_NAMES),
                             (torch.Tensor, ("relu", "relu_"))):
        found.update(getattr(namespace, n) for n in names if hasattr(namespace, n))
    for n in _ATEN_NAMES:
        packet = getattr(torch.ops.aten, n, None)
        if packet is not None and hasattr(packet, "default"):
            found.add(packet.default)
    return found


RECTIFIERS = _rectifiers()


class _ModifiedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, rule, args, kwargs):
        ctx.fn, ctx.rule, ctx.args, ctx.kwargs = fn, rule, args, kwargs
        ctx.x = x.detach().clone()  # a copy: in-place activations may overwrite x later
        return fn(x.detach().clone(), *args, **kwargs)

    @staticmethod
    def backward(ctx, grad):
        positive = grad.clamp(min=0)
        if ctx.rule == "deconvnet":
            return positive, None, None, None, None
        with torch.enable_grad():
            x = ctx.x.requires_grad_(True)
            (local,) = torch.autograd.grad(ctx.fn(x, *ctx.args, **ctx.kwargs), x, positive)
        return local, None, None, None, None


class RectifierRule(TorchFunctionMode):
    """Within this mode, every rectifying activation gets the ``rule`` backward."""

    def __init__(self, rule: str):
        super().__init__()
        self.rule, self.calls = rule, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func not in RECTIFIERS or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        self.calls += 1
        name = getattr(func, "__name__", str(func))
        inplace = kwargs.pop("inplace", False) or name.endswith("_") and not name.endswith("__")
        pure = _out_of_place(func)
        out = _ModifiedBackward.apply(args[0], pure, self.rule, tuple(args[1:]), kwargs)
        if inplace:
            return args[0].copy_(out)
        return out


def _out_of_place(func):
    """The out-of-place twin of an in-place activation (``relu_`` -> ``relu``)."""
    name = getattr(func, "__name__", "")
    if hasattr(func, "overloadpacket"):  # ATen OpOverload
        base = func.overloadpacket.__name__.rstrip("_")
        return getattr(torch.ops.aten, base).default
    if name.endswith("_") and not name.endswith("__"):
        for namespace in (torch.nn.functional, torch, torch._C._nn):
            twin = getattr(namespace, name[:-1], None)
            if twin is not None:
                return twin
    return func


def modified_gradient(ctx, rule: str) -> torch.Tensor:
    """Gradient of the target with every rectifier's backward replaced by ``rule``."""
    ctx.model.named_layers()  # refuses TorchScript with a clear message
    with torch.enable_grad():
        x = ctx.x.detach().requires_grad_(True)
        mode = RectifierRule(rule)
        with mode:
            scores = ctx.score(ctx.forward(x))
        if mode.calls == 0:
            raise XAIError(f"{rule} found no rectifying activation (ReLU, PReLU, LeakyReLU, ...) in the model",
                           "use gradient or integrated-gradients for this network")
        (grad,) = torch.autograd.grad(scores.sum(), x)
    ctx.passes["backward"] += int(x.shape[0])
    return grad


class GuidedBackprop(Method):
    name, title, family = "guided-backprop", "Guided backpropagation", "backprop"
    needs_layers = True
    reference = "Springenberg et al. 2015"

    def run(self, ctx, **_):
        return modified_gradient(ctx, "guided"), {}


class DeconvNet(Method):
    name, title, family = "deconvnet", "DeconvNet", "backprop"
    needs_layers = True
    reference = "Zeiler and Fergus 2014"

    def run(self, ctx, **_):
        return modified_gradient(ctx, "deconvnet"), {}


register(GuidedBackprop, ("guided",))
register(DeconvNet, ("deconvolution",))
