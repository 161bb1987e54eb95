"""Products of two tensors on the input's path (attention: ``q @ k^T``, ``attention @ v``) for LRP (DeepLIFT
reads the same calls with :func:`product_call` and gives them its bilinear rule).

A product is bilinear: gradient x input of either operand sums to the output, so relevance can be shared
between them without loss. The operands that are attention weights (a softmax's output, or a sigmoid gate,
however reshaped or dropped out) are held constant and get none: their product is then a linear map of the
other operand, which gets it all by the epsilon rule (conservative propagation, Ali et al. 2022; AttnLRP's
treatment of the value path, Achtibat et al. 2024). Relevance never enters the attention scores, so ``q`` and
``k`` receive none. Other products of two tensors share it evenly (AttnLRP's uniform rule); a product with a
constant is a linear map of the one operand on the path.
"""
from __future__ import annotations

import torch

from .propagation import in_graph, vjp
from .relevance import stabilize


def product_call(func, args, kwargs):
    """(make(a, b), a, b) of a two-operand product call (``propagation.PRODUCT``), or None for a form the rules
    do not read."""
    name = getattr(func, "__name__", "")
    if name == "einsum":
        operands = args[1:] if len(args) > 2 else tuple(args[1]) if len(args) == 2 else ()
        if len(operands) != 2 or kwargs:
            return None
        equation = args[0]
        return (lambda a, b: torch.einsum(equation, a, b)), operands[0], operands[1]
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    if name == "__rmatmul__":
        a, b = b, a
    op = torch.bmm if name == "bmm" else torch.matmul
    return (lambda p, q: op(p, q)), a, b


class Product(torch.autograd.Function):
    """``make(a, b)``; relevance to each operand: ``shares[i]`` of its gradient x input under the epsilon
    stabiliser (shares sum to 1 over the operands on the path)."""

    @staticmethod
    def forward(ctx, make, shares, eps, ledger, a, b):
        z = make(a.detach(), b.detach())
        ctx.make, ctx.shares, ctx.eps, ctx.ledger = make, shares, eps, ledger
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx, relevance):
        a, b, z = ctx.saved_tensors
        s = relevance / stabilize(z, ctx.eps)
        out = []
        for i, (operand, share) in enumerate(zip((a, b), ctx.shares)):
            if not share:
                out.append(None)
                continue
            other = b if i == 0 else a
            fn = (lambda t: ctx.make(t, other.detach())) if i == 0 else (lambda t: ctx.make(other.detach(), t))
            out.append(share * operand * vjp(fn, operand, s))
        ctx.ledger.book("product", relevance, *out)
        return (None, None, None, None, *out)


def shares(a, b, is_gate) -> tuple[float, float] | None:
    """Each operand's share of the relevance: none for constants and attention weights, the rest evenly; a
    product of one operand with a constant is a linear map of it, which takes it all, gate or not. None if
    neither operand can take it (two attention weights)."""
    on_path = [in_graph(t) for t in (a, b)]
    takers = [path and not is_gate(t) for path, t in zip(on_path, (a, b))]
    if not any(takers):
        if sum(on_path) != 1:
            return None
        takers = on_path
    return tuple(1.0 / sum(takers) if take else 0.0 for take in takers)
