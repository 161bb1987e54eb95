"""DeepLIFT with the rescale rule (Shrikumar et al. 2017) and DeepSHAP (Lundberg and Lee 2017).

Two forward passes and one backward: the input's pass builds the autograd graph
(its nonlinearities' backward apply DeepLIFT multipliers), then the reference's
pass records what each nonlinearity saw; the backward runs over the input only.
Linear operations keep their gradient: for them the multiplier is the weight.

* activations (modules or functional, PReLU and LeakyReLU included):
  ``m = (f(x) - f(x0)) / (x - x0)``, the gradient where ``|x - x0|`` is tiny;
* max pooling: the change of each window's maximum goes to the winner of the
  input when the maximum grew and to the winner of the reference when it shrank,
  so ``m`` lies in [0, 1] and the change is fully accounted for;
* a product of two feature maps (squeeze-excitation gates):
  ``d(ab) = mean(b) da + mean(a) db`` exactly, with means over input and reference;
  matrix products and einsums of two feature maps (attention: ``q k^T``, ``softmax(.) v``) the same way,
  ``d f(a, b) = f(da, mean(b)) + f(mean(a), db)``, exact for every bilinear ``f``; the attention softmax
  gets the rescale rule of every activation, LayerNorm the input's statistics, GELU the rescale rule;
* InstanceNorm / GroupNorm / LayerNorm normalise the reference with the input's
  statistics, so the layer is one linear map for both. Summation to delta holds
  against that pass; ``info`` also records the reference's score under its own
  statistics.

The calls of the two passes are matched by their order (a network's forward is
deterministic in its calls); a mismatch raises an error. DeepSHAP averages
DeepLIFT over a set of references, a few at a time (batched on both passes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.baselines import AUTO, BaselineProbe, check_baseline, chosen_baseline, is_zero, probes, resolve_baseline
from ..core.models import model_output
from ..errors import XAIError
from .backprop import _out_of_place
from .base import BASELINE, Method, batched, completeness_error, register
from .machinery.products import product_call
from .machinery.propagation import PropagationMode, batch_norm_in_eval, bind, in_graph, norm_affine, reduce_to, vjp

TINY = 1e-6


class _Rescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, record, output=None, softmax=False):
        y = fn(x) if output is None else output.detach()  # a module's own output: no second evaluation
        ctx.fn, ctx.record, ctx.softmax = fn, record, softmax
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        x0, y0 = ctx.record["in"], ctx.record["out"]
        dx = x - x0
        small = dx.abs() <= TINY
        m = (y - y0).div_(torch.where(small, 1.0, dx))
        if bool(small.any()):  # the slope at x; for a softmax its diagonal (the ones-vector product is 0)
            slope = y * (1 - y) if ctx.softmax else vjp(ctx.fn, x, torch.ones_like(x))
            m = torch.where(small, slope, m)
        return grad * m, None, None, None, None


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, record):
        ctx.record = record
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        a0, b0 = ctx.record["in"]
        return (reduce_to(grad * (b + b0) / 2, a.shape), reduce_to(grad * (a + a0) / 2, b.shape), None)


class _Bilinear(torch.autograd.Function):
    """``make(a, b)`` for a bilinear ``make`` (a matrix product, an einsum): multipliers at the operands' means."""

    @staticmethod
    def forward(ctx, make, record, a, b):
        ctx.make, ctx.record = make, record
        ctx.save_for_backward(a, b)
        return make(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        a0, b0 = ctx.record["in"]
        mean_a, mean_b = (a + a0) / 2, (b + b0) / 2
        return (None, None, vjp(lambda t: ctx.make(t, mean_b), a, grad),
                vjp(lambda t: ctx.make(mean_a, t), b, grad))


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pool, record):
        y, index = pool(x)
        ctx.record = record
        ctx.save_for_backward(x, y, index)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, index = ctx.saved_tensors
        x0, (y0, index0) = ctx.record["in"], ctx.record["out"]
        top = torch.maximum(y, y0)

        def route(values, where):
            out = torch.zeros_like(x).flatten(2)
            return out.scatter_add_(2, where.flatten(2), values.flatten(2)).view_as(x)

        delta = route(grad * (top - y0), index) + route(grad * (y - top), index0)
        dx = x - x0
        small = dx.abs() <= TINY
        return torch.where(small, route(grad, index), delta / torch.where(small, torch.ones_like(dx), dx)), None, None


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
    """The input's pass (``records`` None) creates one record per nonlinearity, in call order;
    the reference's pass (given those records) fills them in."""

    method = "DeepLIFT"

    def __init__(self, network, x, records: list | None = None):
        super().__init__(network, x)
        self.reference_pass = records is not None
        self.records = [] if records is None else records
        self.position = 0
        self.shared_statistics = False  # a normalisation gave the reference the input's statistics

    def _record(self, kind, shape, **values):
        if not self.reference_pass:
            self.records.append({"kind": kind, "shape": tuple(shape), **values})
            return self.records[-1]
        if self.position >= len(self.records) or self.records[self.position]["kind"] != kind \
                or self.records[self.position]["shape"] != tuple(shape):
            raise XAIError(f"the network made different calls for the input and the reference at {self.where()}",
                           "DeepLIFT needs a forward pass whose calls do not depend on the data")
        self.position += 1
        self.records[self.position - 1].update(values)
        return self.records[self.position - 1]

    def linear(self, func, args, kwargs):
        return func(*args, **kwargs)

    average = add = linear

    def mul(self, func, args, kwargs):
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not (in_graph(a) and in_graph(b)):
            return func(*args, **kwargs)  # scaling by a constant: linear
        if "div" in getattr(func, "__name__", ""):
            raise self.unsupported("a division by a feature map")
        shape = torch.broadcast_shapes(a.shape, b.shape)
        if self.reference_pass:
            self._record("product", shape, **{"in": (a.detach(), b.detach())})
            return a * b  # in-place calls too are computed out of place, as in LRP
        return _Product.apply(a, b, self._record("product", shape))

    def product(self, func, args, kwargs):
        call = product_call(func, args, kwargs)
        if call is None:
            raise self.unsupported(f"'{getattr(func, '__name__', func)}' with other than two operands")
        make, a, b = call
        if not (in_graph(a) and in_graph(b)):
            return make(a, b)  # a product with a constant: linear, the gradient is the multiplier
        shape = tuple(a.shape) + tuple(b.shape)  # both operands' shapes: what the two passes must agree on
        if self.reference_pass:
            self._record("bilinear", shape, **{"in": (a.detach(), b.detach())})
            return make(a, b)
        return _Bilinear.apply(make, self._record("bilinear", shape), a, b)

    def norm(self, func, args, kwargs):
        if func is F.batch_norm:
            batch_norm_in_eval(args, kwargs)
            return func(*args, **kwargs)  # running statistics: linear
        self.shared_statistics = True
        x = args[0]
        if self.reference_pass:
            record = self._record("norm", x.shape)
        else:
            _, scale, shift, _ = norm_affine(func, args, kwargs)
            record = self._record("norm", x.shape, scale=scale.detach(), shift=shift.detach())
        return record["scale"] * x + record["shift"]

    def activation(self, func, args, kwargs):
        pure = _out_of_place(func)
        kw = {k: v for k, v in kwargs.items() if k != "inplace"}
        rest = args[1:]
        softmax = "softmax" in getattr(func, "__name__", "")
        return self._rescale(args[0], lambda t: pure(t, *rest, **kw), softmax=softmax)

    def activation_module(self, module, x, output):
        # forward() skips the hooks; the clone keeps an inplace module off its input
        return self._rescale(x, lambda t: module.forward(t.clone()), output)

    def _rescale(self, x, fn, output=None, softmax=False):
        if self.reference_pass:
            y = fn(x) if output is None else output
            self._record("activation", x.shape, **{"in": x.detach(), "out": y.detach()})
            return y
        return _Rescale.apply(x, fn, self._record("activation", x.shape), output, softmax)

    def maxpool(self, func, args, kwargs):
        b, pool = _pool_with_indices(func, args, kwargs)
        if b.get("return_indices"):
            raise self.unsupported("max pooling that returns its indices")
        x = b["input"]
        if self.reference_pass:
            y, index = pool(x)
            self._record("maxpool", x.shape, **{"in": x.detach(), "out": (y.detach(), index)})
            return y
        return _MaxPool.apply(x, pool, self._record("maxpool", x.shape))


def _pass(ctx, x, rows, records=None):
    """One forward pass under a DeepLiftMode; returns (scores, mode)."""
    mode = DeepLiftMode(ctx.model.network, x, records)
    with mode.active():
        out = ctx.forward(x)
    if records is not None and mode.position != len(records):
        raise XAIError("the network made fewer calls for the reference than for the input",
                       "DeepLIFT needs a forward pass whose calls do not depend on the data")
    return ctx.score(out, rows), mode


def deeplift(ctx, references: torch.Tensor, batch_size: int, label: str, paired: bool = False):
    """Mean DeepLIFT attribution of ``ctx.x`` over ``references`` (R, C, X, Y, Z); returns (maps, info).

    ``paired``: reference i belongs to sample i alone (a baseline made from each input).
    """
    ctx.model.named_layers()  # refuses TorchScript with a clear message
    n_refs = 1 if paired else references.shape[0]
    maps = torch.zeros_like(ctx.x)
    deltas, own = torch.zeros(ctx.x.shape[0]), torch.zeros(ctx.x.shape[0])
    steps = ctx.x.shape[0] * len(range(0, n_refs, max(1, batch_size)))
    done = 0
    for i in range(ctx.x.shape[0]):
        for part in batched(n_refs, batch_size):
            refs = (references[i:i + 1] if paired else references[part]).to(ctx.x)
            k = refs.shape[0]
            xs = ctx.x[i:i + 1].expand(k, *ctx.x.shape[1:])
            rows = torch.full((k,), i, dtype=torch.long, device=ctx.x.device)
            with torch.enable_grad():
                x_in = xs.detach().clone().requires_grad_(True)
                scores, mode = _pass(ctx, x_in, rows)
                # the reference's pass needs autograd only to tell its path from constants
                ref_scores, _ = _pass(ctx, refs.detach().clone().requires_grad_(True), rows, mode.records)
                ref_scores = ref_scores.detach()
                (grad,) = torch.autograd.grad(scores.sum(), x_in)
            ctx.passes["backward"] += k
            maps[i] += (grad * (xs - refs)).sum(0)
            deltas[i] += float((scores.detach() - ref_scores).sum())
            if mode.shared_statistics:  # the references' scores under their own normalisation statistics
                with torch.no_grad():
                    own[i] += float(ctx.score(model_output(ctx.model.network(refs)), rows).sum())
            else:
                own[i] += float(ref_scores.sum())
            done += 1
            ctx.report(done / steps, f"{label} {done}/{steps}")
    maps /= n_refs
    deltas /= n_refs
    own /= n_refs
    sums = maps.flatten(1).sum(1).cpu()
    error = completeness_error(sums, deltas)  # summation to delta
    return maps, {"references": n_refs, "completeness_error": float(error.max()),
                  "score_difference": [float(d) for d in deltas],
                  "reference_score_own_statistics": [float(s) for s in own]}


def _check(method, name, ctx, maps, info, zero: bool, probe, parameter=None) -> dict:
    """The baseline checks on a DeepLIFT map: summation to delta, and the reference scored both ways (with the
    input's normalisation statistics, as summed to, and with its own, as the network scores it)."""
    scores = ctx.score(ctx.reference)
    deltas = torch.as_tensor(info["score_difference"], dtype=torch.float64)
    own = torch.as_tensor(info["reference_score_own_statistics"], dtype=torch.float64)
    # against the network's own score of the reference: differs from summation to delta after instance norm
    info["completeness_error_own_statistics"] = float(completeness_error(
        maps.flatten(1).sum(1).cpu(), scores.cpu().double() - own).max())
    warnings = check_baseline(
        method, name, errors=[info["completeness_error"]], scores=scores,
        baseline_scores=[scores.cpu().double() - deltas, own], zero=zero, probe=probe, parameter=parameter,
        completeness_fix="the multipliers did not sum to the score difference: report it, and use "
                         "integrated-gradients meanwhile")
    if probe.measured:
        info["halving_score_change"] = [float(c) for c in probe.change()]
    if warnings:
        info["warnings"] = warnings
    return info


class DeepLift(Method):
    name, title, family = "deeplift", "DeepLIFT (rescale rule)", "propagation"
    needs_layers = True
    defaults = {"baseline": AUTO}  # zeros, unless the network is scale-invariant (see core.baselines)
    bounds = {"baseline": BASELINE}
    reference = "Shrikumar et al. 2017"
    completeness = True  # summation to delta

    def completeness_baseline(self, x, params, score=None):
        return chosen_baseline(x, params["baseline"], score)

    def completeness_passes(self, params):
        return 1 + 2 * (isinstance(params["baseline"], str) and params["baseline"] == AUTO)

    def cost(self, params):
        return {"forward": 2 + probes(params["baseline"]), "backward": 1}

    def run(self, ctx, baseline):
        probe = BaselineProbe.of(ctx)
        base, chosen = resolve_baseline(ctx.x, baseline, probe)
        maps, info = deeplift(ctx, base, 1, "DeepLIFT", paired=True)
        info.update(chosen)
        return maps, _check(self.name, chosen["baseline"], ctx, maps, info, is_zero(base), probe,
                            f"{self.name}.baseline")


class DeepShap(Method):
    name, title, family = "deepshap", "DeepSHAP (DeepLIFT averaged over references)", "propagation"
    needs_layers = True
    defaults = {"batch_size": 4}
    bounds = {"batch_size": (1, None)}
    reference = "Lundberg and Lee 2017"
    # sums to score(x) minus the *mean* reference score, which no single baseline input gives;
    # its completeness error is recorded in info instead
    completeness = False

    def cost(self, params):
        return {"forward": 8, "backward": 4}  # for 4 references; scales with their number

    def run(self, ctx, batch_size):
        if ctx.references is None:
            raise XAIError("DeepSHAP needs reference volumes", "pass them with --reference FILE (repeatable)")
        maps, info = deeplift(ctx, ctx.references, batch_size, "DeepSHAP")
        zero = any(is_zero(r) for r in ctx.references)  # a zeros reference is blind on a scale-invariant network
        return maps, _check(self.name, "reference-volume", ctx, maps, info, zero, BaselineProbe.of(ctx))


register(DeepLift, ("deep-lift",))
register(DeepShap, ("deep-shap", "deeplift-shap"))
