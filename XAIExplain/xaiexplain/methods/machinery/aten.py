"""ATen calls, as a ``torch.export`` program makes them, restated as the functional calls the rules know.

A ``.pt2`` program runs ``aten.conv3d``, ``aten.instance_norm``, ``aten.add_`` ...
instead of ``F.conv3d``, ``F.instance_norm``, ``+=``. :func:`restate` turns each such
call into the equivalent ``torch.nn.functional`` / ``torch`` call (arguments bound by
the op's own schema), so every propagation rule applies to programs exactly as to
modules: same coverage, same conservation, same error naming. Calls that return
extra outputs (indices of a max pooling, statistics of a norm) get them back as
constants. ATen calls that only move values are listed for the ordinary gradient;
in-place activations are run out of place. Anything else on the input's path is
named by the propagation mode's error, as on a module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

aten = torch.ops.aten


def packets(names: str) -> set:
    return {getattr(aten, name) for name in names.split() if hasattr(aten, name)}


# Moves or copies values without mixing them: the gradient routes relevance as it should.
MOVE = packets("cat concat concatenate stack view _unsafe_view reshape flatten unflatten permute transpose t "
                "squeeze unsqueeze expand expand_as clone contiguous alias _to_copy to slice select narrow split "
                "split_with_sizes chunk unbind constant_pad_nd pad dropout feature_dropout alpha_dropout "
                "feature_alpha_dropout native_dropout movedim lift_fresh_copy repeat index_select")
# Elementwise activations: kept as ATen calls (run out of place), handled like F.relu and its kin.
ACTIVATION = packets("relu relu_ leaky_relu leaky_relu_ prelu _prelu_kernel elu elu_ selu selu_ celu celu_ gelu "
                      "gelu_ silu silu_ mish mish_ hardswish hardswish_ hardtanh hardtanh_ softplus sigmoid "
                      "sigmoid_ tanh tanh_ relu6")


def packet(func):
    """The op family of an ATen overload (``aten.conv3d`` for ``aten.conv3d.default``), else None."""
    return getattr(func, "overloadpacket", None)


def out_of_place(func):
    """The out-of-place twin of an in-place ATen call (``aten.relu.default`` for ``aten.relu_.default``)."""
    name = func.overloadpacket.__name__
    twin = getattr(aten, name[:-1], None) if name.endswith("_") else None
    return getattr(twin, func._overloadname, func) if twin is not None else func


def outputs(func) -> int:
    """How many values an ATen call returns."""
    return len(func._schema.returns)


def bound(func, args: tuple, kwargs: dict) -> dict:
    """An ATen call's arguments by the names of its schema."""
    names = [a.name for a in func._schema.arguments]
    values = dict(zip(names, args))
    values.update(kwargs)
    return values


def _dims(b: dict, key: str = "input") -> int:
    return b[key].ndim - 2


def _conv(b):
    return getattr(F, f"conv{_dims(b)}d"), (b["input"], b["weight"], b.get("bias"), b.get("stride", 1),
                                           b.get("padding", 0), b.get("dilation", 1), b.get("groups", 1)), {}


def _conv_transpose(b):
    return getattr(F, f"conv_transpose{_dims(b)}d"), (
        b["input"], b["weight"], b.get("bias"), b.get("stride", 1), b.get("padding", 0),
        b.get("output_padding", 0), b.get("groups", 1), b.get("dilation", 1)), {}


def _convolution(b):
    return (_conv_transpose if b["transposed"] else _conv)(b)


def _matmul(b):  # x @ W with a constant W is a dense layer with weight W^T
    other = b.get("mat2", b.get("other"))
    if other is None or other.requires_grad and not isinstance(other, torch.nn.Parameter) or other.ndim != 2:
        return None
    bias = b.get("self") if "mat1" in b else None
    if "mat1" in b and (b.get("beta", 1) != 1 or b.get("alpha", 1) != 1):
        return None
    return F.linear, (b["mat1"] if "mat1" in b else b["self"], other.t(), bias), {}


def _batch_norm(b):
    return F.batch_norm, (b["input"], b.get("running_mean"), b.get("running_var"), b.get("weight"), b.get("bias"),
                          b.get("training", False), b.get("momentum", 0.1), b.get("eps", 1e-5)), {}


def _instance_norm(b):
    return F.instance_norm, (b["input"], b.get("running_mean"), b.get("running_var"), b.get("weight"),
                             b.get("bias"), b.get("use_input_stats", True), b.get("momentum", 0.1),
                             b.get("eps", 1e-5)), {}


def _group_norm(b):
    groups = b.get("num_groups", b.get("group"))
    return F.group_norm, (b["input"], groups, b.get("weight"), b.get("bias"), b.get("eps", 1e-5)), {}


def _layer_norm(b):
    return F.layer_norm, (b["input"], b["normalized_shape"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5)), {}


def _avg_pool(b):
    extra = () if _dims(b, "self") == 1 else (b.get("divisor_override"),)
    return getattr(F, f"avg_pool{_dims(b, 'self')}d"), (
        b["self"], b["kernel_size"], b.get("stride") or None, b.get("padding", 0), b.get("ceil_mode", False),
        b.get("count_include_pad", True), *extra), {}


def _adaptive_avg_pool(b):
    return getattr(F, f"adaptive_avg_pool{_dims(b, 'self')}d"), (b["self"], b["output_size"]), {}


def _reduce(name):
    def restated(b):
        dims = b.get("dim")
        if dims is None:
            return getattr(torch, name), (b["self"],), {}
        return getattr(torch, name), (b["self"], dims, b.get("keepdim", False)), {}
    return restated


def _upsample(mode):
    def restated(b):
        source = b.get("input", b.get("self"))
        size, scales = b.get("output_size"), b.get("scale_factors")
        kwargs = {"mode": mode}
        if mode != "nearest":
            kwargs["align_corners"] = b.get("align_corners", False)
        if size is not None:
            kwargs["size"] = list(size)
        else:
            kwargs["scale_factor"] = list(scales)
        return F.interpolate, (source,), kwargs
    return restated


def _max_pool(b):
    return getattr(F, f"max_pool{_dims(b, 'self')}d"), (
        b["self"], b["kernel_size"], b.get("stride") or None, b.get("padding", 0), b.get("dilation", 1),
        b.get("ceil_mode", False)), {}


def _adaptive_max_pool(b):
    return getattr(F, f"adaptive_max_pool{_dims(b, 'self')}d"), (b["self"], b["output_size"]), {}


def _softmax(b):
    return F.softmax, (b["self"], b["dim"]), {}


def _arithmetic(name):
    def restated(b):
        kwargs = {"alpha": b["alpha"]} if name in ("add", "sub") and b.get("alpha", 1) != 1 else {}
        return getattr(torch, name), (b["self"], b["other"]), kwargs
    return restated


# op family -> (restatement, how many outputs the ATen op returns beyond the first)
_RESTATED = {
    "conv1d conv2d conv3d": (_conv, 0), "conv_transpose1d conv_transpose2d conv_transpose3d": (_conv_transpose, 0),
    "convolution _convolution": (_convolution, 0), "linear": (lambda b: (F.linear, (b["input"], b["weight"],
                                                                                    b.get("bias")), {}), 0),
    "addmm mm matmul": (_matmul, 0),
    "batch_norm": (_batch_norm, 0), "_native_batch_norm_legit_no_training": (_batch_norm, 2),
    "instance_norm": (_instance_norm, 0), "group_norm": (_group_norm, 0), "native_group_norm": (_group_norm, 2),
    "layer_norm": (_layer_norm, 0), "native_layer_norm": (_layer_norm, 2),
    "avg_pool1d avg_pool2d avg_pool3d": (_avg_pool, 0),
    "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d":
        (_adaptive_avg_pool, 0),
    "mean": (_reduce("mean"), 0), "sum": (_reduce("sum"), 0),
    "upsample_nearest1d upsample_nearest2d upsample_nearest3d": (_upsample("nearest"), 0),
    "upsample_linear1d": (_upsample("linear"), 0), "upsample_bilinear2d": (_upsample("bilinear"), 0),
    "upsample_trilinear3d": (_upsample("trilinear"), 0),
    "max_pool1d max_pool2d max_pool3d": (_max_pool, 0),
    "max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices": (_max_pool, "indices"),
    "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d": (_adaptive_max_pool, "indices"),
    "softmax _softmax": (_softmax, 0),
    "add add_": (_arithmetic("add"), 0), "sub sub_": (_arithmetic("sub"), 0),
    "mul mul_": (_arithmetic("mul"), 0), "div div_": (_arithmetic("div"), 0),
}
RESTATED = {p: entry for names, entry in _RESTATED.items() for p in packets(names)}


def restate(func, args: tuple, kwargs: dict):
    """``(function, args, kwargs, finish)`` for an ATen call the rules know in functional form, else None.

    ``finish`` turns the functional result into what the ATen op returns (a tuple
    for ops with extra outputs, which are constants: pooling indices, statistics).
    """
    entry = RESTATED.get(packet(func))
    if entry is None:
        return None
    make, extra = entry
    b = bound(func, args, kwargs)
    restated = make(b)
    if restated is None:
        return None
    fn, fn_args, fn_kwargs = restated
    if extra == "indices":
        def finish(out):
            with torch.no_grad():
                _, indices = fn(fn_args[0].detach(), *fn_args[1:], return_indices=True)
            return out, indices
    elif extra:
        def finish(out):
            return (out,) + tuple(out.new_empty(0) for _ in range(extra))
    else:
        def finish(out):
            return out
    return fn, fn_args, fn_kwargs, finish
