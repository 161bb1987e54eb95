"""BatchNorm folding, in one place: an eval-mode BatchNorm after a linear layer is one affine layer.

LRP merges the pair at call time (one layer, one rule: ``fold_into``); the
perturbation methods' inference copy folds every Conv+BatchNorm pair of a traced
copy of the network (``folded_copy``). Both use the same arithmetic.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an eval-mode BatchNorm: ``y = scale * x + shift``."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def fold_into(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor, *,
              transposed: bool = False, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a linear layer (convolution, transposed convolution, dense) followed by a
    per-output-channel affine map. A transposed convolution keeps its output channels on axis 1, per group."""
    if transposed:
        w = weight.unflatten(0, (groups, -1)) * scale.view(groups, 1, -1, *([1] * (weight.ndim - 2)))
        weight = w.flatten(0, 1)
    else:
        weight = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
    bias = shift if bias is None else bias * scale + shift
    return weight, bias


def folded_copy(network: nn.Module) -> fx.GraphModule:
    """A traced copy of ``network`` (eval mode) with every BatchNorm that only reads a convolution's
    output folded into that convolution. Raises what torch.fx raises when the network cannot be traced."""
    # a graph already (a torch.export program): copied as it is; traced again it would gain shape checks
    copied = copy.deepcopy(network)
    traced = copied if isinstance(copied, fx.GraphModule) else fx.symbolic_trace(copied)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training or norm.running_var is None:
            continue
        source = node.args[0]
        conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if not isinstance(conv, CONVOLUTIONS) or len(source.users) != 1 or conv.training:
            continue
        with torch.no_grad():
            weight, bias = fold_into(conv.weight, conv.bias, *batch_norm_affine(norm),
                                     transposed=conv.transposed, groups=conv.groups)
        merged = copy.deepcopy(conv)
        merged.weight = nn.Parameter(weight.detach(), requires_grad=False)
        merged.bias = nn.Parameter(bias.detach(), requires_grad=False)
        parent, _, name = source.target.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, merged)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced
