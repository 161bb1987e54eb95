"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) on any PyTorch/MONAI network.

Relevance travels backwards as the "gradient" of custom autograd functions:
each layer's backward maps the relevance of its outputs to its inputs by a rule.

* Convolutions, transposed convolutions and dense layers get the composite's
  rule (epsilon, z+, alpha-beta, flat, w^2), or the user's per-layer rule.
* A BatchNorm that directly follows a convolution is merged into it (the pair is
  one affine layer and gets one rule), as LRP canonizers do.
* Normalisations with the image's own statistics (InstanceNorm, GroupNorm,
  LayerNorm) pass relevance on unchanged under the z+ / alpha-beta composites
  (``norm_rule='pass'``), as activations do: each voxel keeps its own. Under
  the epsilon composite (``norm_rule='epsilon'``, chosen by 'auto') they
  freeze their standard deviation and get the epsilon rule on the linear map
  that remains, ``scale * (x - mean(x))``, whose mean term spreads relevance
  over the whole volume. A BatchNorm after an activation (running statistics: a
  per-channel affine map) gets the epsilon rule; ``beta`` is a bias.
* Average pooling, means and interpolation: epsilon rule.
* Residual additions (``+`` anywhere) share relevance in proportion to each
  operand's contribution; constants and parameters are biases that absorb theirs.
* A product of a feature map with a gate (squeeze-excitation) gives all the
  relevance to the feature map; activations pass it on unchanged; max pooling
  routes it to the winner; concatenation and slicing route it by position.
* Matrix products and einsums (attention): the attention weights held constant,
  other products shared evenly (:mod:`.machinery.products`).

Relevance at the output is the target's score: for a class, its logit.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..errors import XAIError
from .backprop import _out_of_place
from .base import Method, completeness_error, register
from .machinery.layer_grid import capture_layer
from .machinery.products import Product, product_call, shares
from .machinery.propagation import PropagationMode, in_graph, linear_call, norm_affine, reduce_to, vjp
from .machinery.relevance import Ledger, stabilize


class Rule:
    """How a linear layer (conv, transposed conv, dense) passes relevance to its input."""

    name = "rule"

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def __call__(self, op, x, weight, bias, z, relevance):
        raise NotImplementedError

    def __repr__(self):
        return self.name


class Epsilon(Rule):
    """R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j)."""

    name = "epsilon"

    def __call__(self, op, x, weight, bias, z, relevance):
        return x * op.input_grad(relevance / stabilize(z, self.epsilon), x, weight)


class AlphaBeta(Rule):
    """alpha * positive contributions - beta * negative ones (alpha - beta = 1); biases ignored.

    Contributions split by sign as (xw)+ = x+ w+ + x- w- and (xw)- = x+ w- + x- w+. The
    sums over a layer's inputs take one extra pass: with w+ after a ReLU (x >= 0), else
    with |x| and |w|, since (xw)+ = (|x||w| + xw) / 2 and the layer's own output gives xw.
    Going back, x+ and x- each take one transposed pass (after a ReLU only x+), with the
    positive and negative shares stacked into it for alpha-beta. Each input's relevance is
    then a sum of same-signed terms: no large terms that cancel, whatever an output's sums.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, epsilon: float = 1e-6):
        super().__init__(epsilon)
        if abs(alpha - beta - 1) > 1e-9:
            raise XAIError(f"alpha-beta rule with alpha={alpha}, beta={beta}", "choose alpha - beta = 1")
        self.alpha, self.beta = float(alpha), float(beta)
        self.name = "zplus" if beta == 0 and alpha == 1 else f"alpha{alpha:g}-beta{beta:g}"

    def __call__(self, op, x, weight, bias, z, relevance):
        channel = -1 if op.kind == "linear" else 1  # where the outputs' channels are
        xw = z if bias is None else z - (bias if channel == -1 else bias.view(-1, *([1] * (z.ndim - 2))))
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        nonnegative = x >= 0
        signed = not bool(nonnegative.all())
        # the positive sum and minus the negative one (>= 0, so stabilising is adding eps); for
        # signed inputs both twice over, 2 (xw)+- = |x||w| +- xw, and the relevance too
        if signed:
            magnitude, twice = op.forward(x.abs(), weight.abs()), 2.0
            positive = (magnitude + xw).clamp_(min=0)
        else:
            positive, twice = op.forward(x, wp), 1.0
        if self.beta:  # before the positive sum takes its eps
            negative = (magnitude.sub_(xw) if signed else positive - xw).clamp_(min=0).add_(twice * self.epsilon)
        terms = [(relevance.mul(twice * self.alpha).div_(positive.add_(twice * self.epsilon)), wp, wn)]
        if self.beta:
            terms.append((relevance.mul(twice * self.beta).div_(negative), wn, wp))
        # (share, weights seen by x+, weights seen by x-): x+ and x- go back separately
        stack = len(terms) > 1 and (op.kind == "linear" or not (op.spec["transposed"] or op.spec["groups"] > 1))

        def back(which):
            if stack:  # the positive and negative shares in one transposed pass
                return op.input_grad(torch.cat([t[0] for t in terms], channel), x,
                                     torch.cat([t[which] for t in terms], 0))
            return sum(op.input_grad(t[0], x, t[which]) for t in terms)

        if not signed:
            return back(1).mul_(x)
        return torch.where(nonnegative, back(1), back(2)).mul_(x)


class Flat(Rule):
    """Relevance spread evenly over each output's receptive field (for the input layer)."""

    name = "flat"
    uniform = True  # unit weights: every output channel spreads over its window alike

    def _weights(self, weight):
        return torch.ones_like(weight)

    def __call__(self, op, x, weight, bias, z, relevance):
        if self.uniform and op.kind == "conv" and not (op.spec["transposed"] or op.spec["groups"] > 1):
            return _box_spread(op, x, weight.shape[2:], relevance, self.epsilon)
        if self.uniform and op.kind == "linear":  # every output reads every input
            return (relevance.sum(-1, keepdim=True) / (x.shape[-1] + self.epsilon)).expand(x.shape).contiguous()
        ones, w = torch.ones_like(x), self._weights(weight)
        return op.input_grad(relevance / stabilize(op.forward(ones, w), self.epsilon), ones, w)


def _box_spread(op, x, kernel, relevance, eps):
    """The flat rule for a convolution, one axis at a time: a box kernel is separable.

    Every output channel reads the same window, so the relevance is summed over channels,
    divided by the window's count of inputs (a product of per-axis counts) and spread back
    by one transposed box filter per axis: 3k instead of k^3 taps per voxel in 3-D.
    """
    s, dims = op.spec, len(kernel)

    def along(d, value, rest):  # a per-axis argument that acts on axis d only
        return [value if e == d else rest for e in range(dims)]

    count = torch.tensor(float(x.shape[1]), dtype=x.dtype, device=x.device)
    for d, k in enumerate(kernel):
        line = torch.ones(1, 1, x.shape[2 + d], dtype=x.dtype, device=x.device)
        per_axis = F.conv1d(line, line.new_ones(1, 1, k), stride=s["stride"][d], padding=s["padding"][d],
                            dilation=s["dilation"][d]).flatten()
        count = count * per_axis.view(-1, *([1] * (dims - 1 - d)))
    g = (relevance / count.add_(eps)).sum(1, keepdim=True)
    for d, k in enumerate(kernel):
        extra = x.shape[2 + d] - ((g.shape[2 + d] - 1) * s["stride"][d] - 2 * s["padding"][d]
                                  + s["dilation"][d] * (k - 1) + 1)
        g = torch.ops.aten.convolution.default(
            g, g.new_ones(1, 1, *along(d, k, 1)), None, along(d, s["stride"][d], 1), along(d, s["padding"][d], 0),
            along(d, s["dilation"][d], 1), True, along(d, extra, 0), 1)
    return g.expand(x.shape).contiguous()


class WSquare(Flat):
    """Relevance spread in proportion to squared weights (for the input layer)."""

    name = "wsquare"
    uniform = False

    def _weights(self, weight):
        return weight * weight


RULES = {"epsilon": Epsilon, "zplus": lambda eps: AlphaBeta(1, 0, eps),
         "alpha1-beta0": lambda eps: AlphaBeta(1, 0, eps), "alpha2-beta1": lambda eps: AlphaBeta(2, 1, eps),
         "flat": Flat, "wsquare": WSquare}

# composite: (rule for convolutions, rule for dense layers, rule for the input layer or None)
COMPOSITES = {
    "epsilon": ("epsilon", "epsilon", None),
    "epsilon-plus": ("zplus", "epsilon", None),
    "epsilon-plus-flat": ("zplus", "epsilon", "flat"),
    "alpha1-beta0": ("alpha1-beta0", "epsilon", None),
    "alpha2-beta1": ("alpha2-beta1", "epsilon", None),
}


# InstanceNorm, GroupNorm, LayerNorm (statistics of the image itself): relevance passed on unchanged
# ('pass'), or the epsilon rule on the centring map x - mean(x) ('epsilon'), whose mean term spreads
# every voxel's relevance over the whole volume: on HD-BET 61% of it ended in the air around the head.
# 'pass' only suits rules that share by positive contributions (z+, alpha-beta): the epsilon rule divides
# by the layer's own output, which a norm recentres, so after a passed norm its ratios blow up.
# 'auto': pass under a z+/alpha-beta composite, epsilon under the epsilon composite.
NORM_RULES = ("auto", "pass", "epsilon")


def make_rule(spec, epsilon: float) -> Rule:
    if isinstance(spec, Rule):
        return spec
    if spec not in RULES:
        raise XAIError(f"unknown LRP rule '{spec}'", f"use one of: {', '.join(RULES)} (or a Rule object)")
    return RULES[spec](epsilon)


# The forward functions compute their output inside ``forward`` (from a closure where the
# value depends on more than the inputs), so no output needs a defensive copy.

class _LinearRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op, rule, ledger, make=None):
        z = op.forward(x, weight, bias) if make is None else make()
        ctx.op, ctx.rule, ctx.ledger = op, rule, ledger
        ctx.save_for_backward(x, weight, bias, z)
        return z

    @staticmethod
    def backward(ctx, relevance):
        x, weight, bias, z = ctx.saved_tensors
        out = ctx.rule(ctx.op, x, weight, bias, z, relevance)
        ctx.ledger.book(ctx.rule.name, relevance, out)
        return out, None, None, None, None, None, None


class _Epsilon(torch.autograd.Function):
    """Epsilon rule for a parameter-free linear op ``fn`` (pooling, mean, interpolation)."""

    @staticmethod
    def forward(ctx, x, fn, eps, ledger):
        z = fn(x)
        if z.data_ptr() == x.data_ptr():
            z = z.clone()  # an identity-like call (e.g. interpolation to the same size)
        ctx.fn, ctx.eps, ctx.ledger = fn, eps, ledger
        ctx.save_for_backward(x, z)
        return z

    @staticmethod
    def backward(ctx, relevance):
        x, z = ctx.saved_tensors
        out = x * vjp(ctx.fn, x, relevance / stabilize(z, ctx.eps))
        ctx.ledger.book("epsilon-average", relevance, out)
        return out, None, None, None


class _Norm(torch.autograd.Function):
    """Normalisation, standard deviation frozen: epsilon rule on the linear map ``scale * (x - mean(x))``.

    The mean is a linear function of the input (a constant for running statistics),
    so relevance stays proportional to each input's contribution; ``beta`` is a bias.
    """

    @staticmethod
    def forward(ctx, x, scale, center, eps, ledger, make):
        y = make()
        ctx.center, ctx.eps, ctx.ledger = center, eps, ledger
        ctx.save_for_backward(x, y, scale)
        return y

    @staticmethod
    def backward(ctx, relevance):
        x, y, scale = ctx.saved_tensors
        g = scale * (relevance / stabilize(y, ctx.eps))
        if ctx.center is not None:
            g = ctx.center(g)
        ctx.ledger.book("norm", relevance, x * g)
        return x * g, None, None, None, None, None


class _Share(torch.autograd.Function):
    """A sum of terms: each operand gets relevance in proportion to its signed contribution."""

    @staticmethod
    def forward(ctx, make, coefficients, eps, ledger, *operands):
        out = make()
        ctx.coefficients, ctx.eps, ctx.ledger = coefficients, eps, ledger
        ctx.save_for_backward(out, *operands)
        return out

    @staticmethod
    def backward(ctx, relevance):
        out, *operands = ctx.saved_tensors
        share = relevance / stabilize(out, ctx.eps)
        grads = [reduce_to(c * t * share, t.shape) for c, t in zip(ctx.coefficients, operands)]
        ctx.ledger.book("sum", relevance, *grads)
        return (None, None, None, None, *grads)


class _Pass(torch.autograd.Function):
    """Value ``make()``, relevance handed to ``x`` unchanged (activations, gating)."""

    @staticmethod
    def forward(ctx, x, make):
        return make()

    @staticmethod
    def backward(ctx, relevance):
        return relevance, None


def _operands(func, args, kwargs):
    """(tensor-or-number, coefficient) terms of an addition/subtraction call."""
    name = getattr(func, "__name__", "")
    a = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if name == "__rsub__":
        return [(a, -1.0), (b, 1.0)]
    sign = -1.0 if "sub" in name else 1.0
    return [(a, 1.0), (b, sign * float(alpha))]


class LRPMode(PropagationMode):
    method = "LRP"

    def __init__(self, network, x, composite="epsilon-plus-flat", epsilon=1e-6, rules=None, input_rule=None,
                 norm_rule="auto"):
        super().__init__(network, x)
        if composite not in COMPOSITES:
            raise XAIError(f"unknown LRP composite '{composite}'", f"use one of: {', '.join(COMPOSITES)}")
        conv, dense, first = COMPOSITES[composite]
        first = input_rule if input_rule is not None else first
        self.eps = float(epsilon)
        self.conv, self.dense = make_rule(conv, self.eps), make_rule(dense, self.eps)
        self.first = make_rule(first, self.eps) if first is not None else None
        self.rules = {k: make_rule(v, self.eps) for k, v in (rules or {}).items()}
        self.produced = {}  # id(output) -> the linear call that made it (for BatchNorm merging)
        self.used: dict[str, int] = {}
        self.gates = {}  # id -> outputs of sigmoids: in a product, the other factor is the signal
        self.ledger = Ledger(x.shape[0])
        if norm_rule not in NORM_RULES:
            raise XAIError(f"unknown LRP norm rule '{norm_rule}'", f"use one of: {', '.join(NORM_RULES)}")
        if norm_rule == "auto":
            norm_rule = "epsilon" if isinstance(self.conv, Epsilon) else "pass"
        self.norm_rule = norm_rule

    def _count(self, what):
        self.used[what] = self.used.get(what, 0) + 1

    def _is_input(self, t):
        return t is self.input or (t.shape == self.input.shape and t.data_ptr() == self.input.data_ptr())

    def linear(self, func, args, kwargs):
        x, weight, bias, op = linear_call(func, args, kwargs)
        name, module = self.layer
        rule = self.match_rule(self.rules, name, module)
        if rule is None:
            rule = self.first if self.first is not None and self._is_input(x) else (
                self.dense if op.kind == "linear" else self.conv)
        return self._apply(x, weight, bias, op, rule)

    def _apply(self, x, weight, bias, op, rule, make=None):
        self._count(rule.name)
        out = _LinearRule.apply(x, weight.detach(), None if bias is None else bias.detach(), op, rule, self.ledger,
                                make)
        self.produced[id(out)] = (out, x, weight, bias, op, rule)
        return out

    def norm(self, func, args, kwargs):
        x, scale, shift, center = norm_affine(func, args, kwargs)
        made = self.produced.get(id(x))
        if func is torch.nn.functional.batch_norm and made is not None and made[0] is x:
            _, source, weight, bias, op, rule = made
            weight, bias = op.scale_outputs(weight.detach(), None if bias is None else bias.detach(),
                                            scale.flatten(), shift.flatten())
            self._count("batchnorm-merged")
            scale, shift = scale.detach(), shift.detach()
            # the merged layer's output is the BatchNorm's output: no second convolution
            return self._apply(source, weight, bias, op, rule, make=lambda: x.detach() * scale + shift)
        if self.norm_rule == "pass" and center is not None:  # statistics of the image itself
            self._count("pass-norm")
            return _Pass.apply(x, lambda: func(*args, **kwargs))
        self._count("norm")
        return _Norm.apply(x, scale.detach(), center, self.eps, self.ledger, lambda: func(*args, **kwargs))

    def average(self, func, args, kwargs):
        x, rest = args[0], args[1:]
        if any(in_graph(t) for t in rest) or not in_graph(x):
            raise self.unsupported(f"'{func.__name__}' over several inputs")
        self._count("epsilon-average")
        return _Epsilon.apply(x, lambda t: func(t, *rest, **kwargs), self.eps, self.ledger)

    def add(self, func, args, kwargs):
        terms = _operands(func, args, kwargs)
        graph = [(t, c) for t, c in terms if in_graph(t)]

        def make():  # out of place, whatever the call
            return sum(c * (t.detach() if isinstance(t, torch.Tensor) else t) for t, c in terms)

        out = _Share.apply(make, tuple(c for _, c in graph), self.eps, self.ledger, *[t for t, _ in graph])
        return out

    def mul(self, func, args, kwargs):
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        name = getattr(func, "__name__", "")
        a_, b_ = (t.detach() if isinstance(t, torch.Tensor) else t for t in (a, b))
        shape = torch.broadcast_shapes(*(t.shape for t in (a_, b_) if isinstance(t, torch.Tensor)))
        if "div" in name and in_graph(b):
            raise self.unsupported("a division by a feature map")
        graph = [t for t in (a, b) if in_graph(t)]
        signal = [t for t in graph if t.shape == shape and self.gates.get(id(t)) is not t]
        if len(graph) == 2 and len(signal) != 1:
            raise self.unsupported("a product of two feature maps")
        if not signal:
            raise self.unsupported("a broadcasting product")
        self._count("pass-gate" if len(graph) == 2 else "pass-scale")
        return _Pass.apply(signal[0], lambda: a_ / b_ if "div" in name else a_ * b_)

    def product(self, func, args, kwargs):
        call = product_call(func, args, kwargs)
        if call is None:
            raise self.unsupported(f"'{getattr(func, '__name__', func)}' with other than two operands")
        make, a, b = call
        split = shares(a, b, lambda t: self.gates.get(id(t)) is t)
        if split is None:
            raise self.unsupported("a product of two attention maps")
        self._count("product-attention-held" if 0.0 in split and in_graph(a) and in_graph(b) else "product")
        return Product.apply(make, split, self.eps, self.ledger, a, b)

    def activation(self, func, args, kwargs):
        pure = _out_of_place(func)
        kw = {k: v for k, v in kwargs.items() if k != "inplace"}
        self._count("pass-activation")
        out = _Pass.apply(args[0], lambda: pure(*args, **kw))
        return self._gate(func, out)

    def activation_module(self, module, x, output):
        self._count("pass-activation")
        return self._gate(module, _Pass.apply(x, lambda: output.detach()))

    def moved(self, args, out):
        if isinstance(out, torch.Tensor) and any(self.gates.get(id(t)) is t for t in args[:1]):
            self.gates[id(out)] = out  # a reshaped gate is still a gate
        return out

    def _gate(self, what, out):
        name = getattr(what, "__name__", "")
        if isinstance(what, (torch.nn.Sigmoid, torch.nn.Hardsigmoid)) or "sigmoid" in name or "softmax" in name:
            self.gates[id(out)] = out
        return out


def propagate(ctx, mode_settings: dict, at: str | None = None):
    """One LRP pass for ``ctx``'s target under ``LRPMode(**mode_settings)``: (the relevance at the input, or at
    layer ``at``'s output; the target scores; the mode, with its ledger and the rules it applied)."""
    with torch.enable_grad():
        x = ctx.x.detach().clone().requires_grad_(True)
        mode = LRPMode(ctx.model.network, x, **mode_settings)
        with mode.active(), (capture_layer(ctx, at) if at else nullcontext()) as captured:
            out = ctx.forward(x)
        scores = ctx.score(out)
        (seed,) = torch.autograd.grad(scores.sum(), out, retain_graph=True)
        (relevance,) = torch.autograd.grad(out, captured[-1][1] if at else x, seed * out.detach())
    ctx.passes["backward"] += int(x.shape[0])
    return relevance.detach(), scores.detach(), mode


def lrp(ctx, composite="epsilon-plus-flat", epsilon=1e-6, rules=None, input_rule=None, norm_rule="auto"):
    """Input relevance for ``ctx``'s target; returns (relevance, info)."""
    ctx.model.named_layers()  # refuses TorchScript with a clear message
    relevance, scores, mode = propagate(ctx, {"composite": composite, "epsilon": epsilon, "rules": rules,
                                              "input_rule": input_rule, "norm_rule": norm_rule})
    totals, scores = relevance.double().flatten(1).sum(1).cpu(), scores.double().cpu()
    absorbed = 1 - totals / scores
    # what the input lacks of the score, less what the ledger booked: relevance lost or made off the rules
    unbooked = completeness_error(totals + mode.ledger.total(len(scores)), scores)
    return relevance, {"composite": composite, "epsilon": epsilon, "norm_rule": mode.norm_rule,
                       "rules_applied": dict(sorted(mode.used.items())),
                       "completeness_error": float(completeness_error(totals, scores).max()),
                       "relevance_sum": [float(t) for t in totals], "score": [float(s) for s in scores],
                       "absorbed_share": [float(a) for a in absorbed], "absorbed_by": mode.ledger.shares(scores),
                       "conservation_error": float(unbooked.max())}


class LRP(Method):
    name, title, family = "lrp", "Layer-wise relevance propagation", "propagation"
    needs_layers = True
    defaults = {"composite": "epsilon-plus-flat", "epsilon": 1e-6, "rules": None, "input_rule": None,
                "norm_rule": "auto"}
    bounds = {"composite": tuple(COMPOSITES), "epsilon": (1e-12, None), "norm_rule": NORM_RULES}  # 0: z = 0 divides
    reference = "Bach et al. 2015; Montavon et al. 2019"
    completeness = True  # relevance sums to the score, less what biases absorb

    def time_factor(self, model, device):
        return 2.0  # its rules' extra passes: 1.2-2.4 x a forward+backward (README, bench_propagation.py)

    def run(self, ctx, composite, epsilon, rules, input_rule, norm_rule):
        return lrp(ctx, composite, epsilon, rules, input_rule, norm_rule)


register(LRP, ("layer-wise-relevance-propagation",))
