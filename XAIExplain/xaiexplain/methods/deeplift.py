"""DeepLIFT with the rescale rule (Shrikumar et al. 2017) and DeepSHAP (Lundberg and Lee 2017).

The input and its reference run through the network together, as the two halves
of one batch. Linear operations keep their gradient (for them the multiplier is
the weight). Nonlinear ones get DeepLIFT multipliers in their backward:

* activations (modules or functional, PReLU and LeakyReLU included):
  ``m = (f(x) - f(x0)) / (x - x0)``, the gradient where ``|x - x0|`` is tiny;
* max pooling: the change of each window's maximum goes to the winner of the
  input when the maximum grew and to the winner of the reference when it shrank,
  so ``m`` lies in [0, 1] and the change is fully accounted for;
* a product of two feature maps (squeeze-excitation gates):
  ``d(ab) = mean(b) da + mean(a) db`` exactly, with means over input and reference;
* InstanceNorm / GroupNorm / LayerNorm normalise the reference with the input's
  statistics, so the layer is one linear map for both halves. Summation to delta
  holds exactly against that pass; ``info`` also records how far the
  reference's score under its own statistics differs.

DeepSHAP averages DeepLIFT over a set of references, a few at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import XAIError
from ..models import model_output
from .backprop import _out_of_place
from .base import Method, batched, register
from .gradients import baseline_for
from .propagation import PropagationMode, bind, in_graph, norm_affine, reduce_to, vjp

TINY = 1e-6


def _halves(t):
    return t.chunk(2)


class _Rescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, fn):
        ctx.fn = fn
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        (x1, x2), (y1, y2), (g1, _) = _halves(x), _halves(y), _halves(grad)
        dx = x1 - x2
        small = dx.abs() <= TINY
        m = (y1 - y2) / torch.where(small, torch.ones_like(dx), dx)
        if bool(small.any()):
            m = torch.where(small, vjp(ctx.fn, x1, torch.ones_like(x1)), m)
        return torch.cat([g1 * m, torch.zeros_like(g1)]), None, None


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors

        def mean_of_halves(t):
            h1, h2 = _halves(t)
            return torch.cat([(h1 + h2) / 2] * 2)

        return reduce_to(grad * mean_of_halves(b), a.shape), reduce_to(grad * mean_of_halves(a), b.shape)


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pool):
        y, index = pool(x)
        ctx.save_for_backward(x, y, index)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        x, y, index = ctx.saved_tensors
        (x1, x2), (y1, y2), (i1, i2), (g1, _) = _halves(x), _halves(y), _halves(index), _halves(grad)
        top = torch.maximum(y1, y2)

        def route(values, index_):
            out = torch.zeros_like(x1).flatten(2)
            return out.scatter_add_(2, index_.flatten(2), values.flatten(2)).view_as(x1)

        delta = route(g1 * (top - y2), i1) + route(g1 * (y1 - top), i2)
        dx = x1 - x2
        small = dx.abs() <= TINY
        m = torch.where(small, route(g1, i1), delta / torch.where(small, torch.ones_like(dx), dx))
        return torch.cat([m, torch.zeros_like(m)]), None


def _pool_with_indices(func, args, kwargs):
    name = getattr(func, "__name__", "")
    if "adaptive" in name:
        b = bind("input output_size return_indices", args, kwargs)
        dims = b["input"].ndim - 2
        fn = getattr(F, f"adaptive_max_pool{dims}d")
        return b, lambda t: fn(t, b["output_size"], return_indices=True)
    b = bind("input kernel_size stride padding dilation ceil_mode return_indices", args, kwargs)
    dims = b["input"].ndim - 2
    fn = getattr(F, f"max_pool{dims}d")
    return b, lambda t: fn(t, b["kernel_size"], b.get("stride"), b.get("padding", 0), b.get("dilation", 1),
                           ceil_mode=b.get("ceil_mode", False), return_indices=True)


class DeepLiftMode(PropagationMode):
    method = "DeepLIFT"
    shared_statistics = False  # set when a normalisation used the input's statistics for the reference

    def linear(self, func, args, kwargs):
        return func(*args, **kwargs)

    average = linear

    def add(self, func, args, kwargs):
        return func(*args, **kwargs)

    def mul(self, func, args, kwargs):
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not (in_graph(a) and in_graph(b)):
            return func(*args, **kwargs)  # scaling by a constant: linear
        if "div" in getattr(func, "__name__", ""):
            raise self.unsupported("a division by a feature map")
        out = _Product.apply(a, b)
        if getattr(func, "__name__", "").startswith(("__i", "mul_")):
            return a.copy_(out)
        return out

    def norm(self, func, args, kwargs):
        if func is F.batch_norm:
            norm_affine(func, args, kwargs)  # refuses training mode
            return func(*args, **kwargs)  # running statistics: linear
        self.shared_statistics = True
        x = args[0]
        first, _ = _halves(x)
        _, scale, shift, _, _ = norm_affine(func, args, kwargs, stats_from=torch.cat([first, first]))
        return scale * x + shift

    def activation(self, func, args, kwargs):
        pure = _out_of_place(func)
        kw = {k: v for k, v in kwargs.items() if k != "inplace"}
        rest = args[1:]
        out = _Rescale.apply(args[0], pure(*args, **kw).detach(), lambda t: pure(t, *rest, **kw))
        name = getattr(func, "__name__", "")
        if kwargs.get("inplace") or (name.endswith("_") and not name.endswith("__")):
            return args[0].copy_(out)
        return out

    def activation_module(self, module, x, output):
        # forward() skips the hooks; the clone keeps an inplace module off the leaf in the fallback
        return _Rescale.apply(x, output.detach(), lambda t: module.forward(t.clone()))

    def maxpool(self, func, args, kwargs):
        b, pool = _pool_with_indices(func, args, kwargs)
        if b.get("return_indices"):
            raise self.unsupported("max pooling that returns its indices")
        return _MaxPool.apply(b["input"], pool)


def deeplift(ctx, references: torch.Tensor, batch_size: int, label: str):
    """Mean DeepLIFT attribution of ``ctx.x`` over ``references`` (R, C, X, Y, Z); returns (maps, info)."""
    ctx.model.named_layers()  # refuses TorchScript with a clear message
    n_refs = references.shape[0]
    maps = torch.zeros_like(ctx.x)
    deltas, own = torch.zeros(ctx.x.shape[0]), torch.zeros(ctx.x.shape[0])
    steps = ctx.x.shape[0] * len(range(0, n_refs, max(1, batch_size)))
    done = 0
    for i in range(ctx.x.shape[0]):
        for part in batched(n_refs, batch_size):
            refs = references[part].to(ctx.x)
            k = refs.shape[0]
            xs = ctx.x[i:i + 1].expand(k, *ctx.x.shape[1:])
            rows = torch.full((2 * k,), i, dtype=torch.long, device=ctx.x.device)
            with torch.enable_grad():
                both = torch.cat([xs, refs]).detach().requires_grad_(True)
                mode = DeepLiftMode(ctx.model.network, both)
                with mode.active():
                    out = ctx.forward(both)
                scores = ctx.score(out, rows)
                (grad,) = torch.autograd.grad(scores[:k].sum(), both)
            ctx.passes["backward"] += 2 * k
            maps[i] += (grad[:k] * (xs - refs)).sum(0)
            deltas[i] += float((scores[:k] - scores[k:]).detach().sum())
            if mode.shared_statistics:  # the references' scores under their own normalisation statistics
                with torch.no_grad():
                    own[i] += float(ctx.score(model_output(ctx.model.network(refs)), rows[:k]).sum())
            else:
                own[i] += float(scores[k:].detach().sum())
            done += 1
            ctx.report(done / steps, f"{label} {done}/{steps}")
    maps /= n_refs
    deltas /= n_refs
    own /= n_refs
    sums = maps.flatten(1).sum(1).cpu()
    error = (sums - deltas).abs() / deltas.abs().clamp_min(1e-12)
    return maps, {"references": n_refs, "summation_relative_error": float(error.max()),
                  "score_difference": [float(d) for d in deltas],
                  "reference_score_own_statistics": [float(s) for s in own]}


def _reference_set(ctx, baseline):
    if isinstance(baseline, str) and baseline == "references":
        if ctx.references is None:
            raise XAIError("no reference volumes were given", "pass reference volumes (--reference FILE, repeatable)")
        return ctx.references
    base = baseline_for(ctx.x[:1], baseline, ctx.references)
    return base


class DeepLift(Method):
    name, title, family = "deeplift", "DeepLIFT (rescale rule)", "propagation"
    needs_layers = True
    defaults = {"baseline": "zeros"}
    reference = "Shrikumar et al. 2017"
    completeness = True  # summation to delta

    def cost(self, params):
        return {"forward": 3, "backward": 2}

    def run(self, ctx, baseline):
        refs = _reference_set(ctx, baseline)
        if refs.shape[0] != 1:
            raise XAIError(f"DeepLIFT takes one baseline, {refs.shape[0]} were given", "use deepshap for several")
        return deeplift(ctx, refs, 1, "DeepLIFT")


class DeepShap(Method):
    name, title, family = "deepshap", "DeepSHAP (DeepLIFT averaged over references)", "propagation"
    needs_layers = True
    defaults = {"baseline": "references", "batch_size": 4}
    reference = "Lundberg and Lee 2017"
    completeness = True

    def cost(self, params):
        return {"forward": 12, "backward": 8}  # for 4 references; scales with their number

    def run(self, ctx, baseline, batch_size):
        return deeplift(ctx, _reference_set(ctx, baseline), batch_size, "DeepSHAP")


register(DeepLift, ("deep-lift",))
register(DeepShap, ("deep-shap", "deeplift-shap"))
