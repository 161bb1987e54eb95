"""A TorchScript network restated as a ``torch.export`` program whose layers hooks can see.

torch's converter (``torch._export.converter``) turns TorchScript into one flat graph of
ATen calls that reads the weights by their original names (``init.0.weight``). The
propagation rules work on such a graph as it is; hook-based methods (the CAM family)
need layers that are called. So after each call that reads a ``<layer>.weight``, the
graph calls the module at ``<layer>``, made to return its input: a hook on it sees
that layer's output, under the name the TorchScript file gives the layer.
"""
from __future__ import annotations

import types
import warnings

import torch
from torch import nn


def _passes_input(self, x):
    return x


def passes_input(module: nn.Module) -> bool:
    """Whether ``module`` is one of the layer markers :func:`program_from_torchscript` calls (it returns its input)."""
    return getattr(module.forward, "__func__", None) is _passes_input


def _fixed_mode(self, mode: bool = True):
    return self  # a program's calls fix train/eval behaviour when it is made; torch refuses to switch it


def _layer_of(node) -> str | None:
    for arg in node.args:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and str(arg.target).endswith(".weight"):
            return str(arg.target)[:-len(".weight")]
    return None


def program_from_torchscript(network: nn.Module, sample: torch.Tensor) -> nn.Module:
    """The program of ``network`` (traced on ``sample``), each weighted layer callable under its own name."""
    from torch._export.converter import TS2EPConverter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = TS2EPConverter(network, (sample,)).convert().module()
    graph = module.graph
    for node in list(graph.nodes):
        layer = _layer_of(node) if node.op == "call_function" else None
        if layer is None or not isinstance(node.meta.get("val"), torch.Tensor):
            continue
        holder = module.get_submodule(layer)
        holder.forward = types.MethodType(_passes_input, holder)
        with graph.inserting_after(node):
            called = graph.call_module(layer, (node,))
        node.replace_all_uses_with(called, delete_user_cb=lambda user: user is not called)
    graph.lint()
    module.recompile()
    module.train = types.MethodType(_fixed_mode, module)
    module.eval = types.MethodType(_fixed_mode, module)
    return module
