"""Every method against its reference implementation (Captum, MONAI) where one exists and is right,
and a demonstration of the difference where the reference is wrong."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients,
                         LayerGradCam, Saliency)
from conftest import pearson
from monai.networks.nets import DenseNet121
from monai.visualize import CAM, GradCAM, GradCAMpp, GuidedBackpropGrad
from torch import nn

from xaiexplain import attribute, load_model
from xaiexplain.synthlesion.demo_model import SynthLesionNet
from xaiexplain.core.baselines import baseline_for
from xaiexplain.methods.gradients import smoothgrad_noise

LESION = 1  # the demo model's positive class


def clone(net):
    """A private copy for MONAI's CAM classes, which leave their hooks on the network they are given."""
    return copy.deepcopy(net)


def ours(model, x, method, **kw):
    maps, info, ctx = attribute(model, x, method, target=kw.pop("target", LESION), **kw)
    return maps.detach(), info, ctx


def test_gradient_matches_captum_saliency(demo, demo_x):
    mine, _, _ = ours(demo, demo_x, "gradient")
    ref = Saliency(demo.network).attribute(demo_x.clone(), target=LESION, abs=False)
    assert pearson(mine, ref) >= 0.999


def test_gradient_x_input_matches_captum(demo, demo_x):
    mine, _, _ = ours(demo, demo_x, "gradient-x-input")
    ref = InputXGradient(demo.network).attribute(demo_x.clone(), target=LESION)
    assert pearson(mine, ref) >= 0.999


def test_blur_baseline_equals_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter
    # anisotropic, two channels, one axis shorter than the kernel's radius (15): edges replicated
    x = torch.rand(2, 2, 37, 9, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = baseline_for(x, "blur").numpy()
    theirs = gaussian_filter(x.numpy(), sigma=(0, 0, 5, 5, 5), mode="nearest", truncate=3.0)
    assert abs(ours - theirs).max() < 1e-12


def test_integrated_gradients_matches_captum_and_is_complete(demo, demo_x):
    mine, info, ctx = ours(demo, demo_x, "integrated-gradients", params={"steps": 32})
    ref = IntegratedGradients(demo.network).attribute(demo_x.clone(), target=LESION, n_steps=32,
                                                       method="gausslegendre", internal_batch_size=8)
    assert pearson(mine, ref) >= 0.99
    assert info["completeness_error"] < 0.05
    assert ctx.passes["backward"] == 32


def test_smoothgrad_is_the_mean_saliency_over_its_recorded_noise(demo, demo_x):
    mine, _, _ = ours(demo, demo_x, "smoothgrad", params={"samples": 6, "noise_level": 0.1, "batch_size": 4}, seed=3)
    noise = smoothgrad_noise(demo_x, 6, 0.1, seed=3)
    saliency = Saliency(demo.network)
    ref = torch.stack([saliency.attribute(demo_x + n[None], target=LESION, abs=False)[0] for n in noise]).mean(0)
    assert pearson(mine[0], ref) >= 0.999
    # the noise matters: a different seed gives a different map
    other, _, _ = ours(demo, demo_x, "smoothgrad", params={"samples": 6, "noise_level": 0.1}, seed=4)
    assert not torch.allclose(other, mine)


def test_gradcam_matches_captum_and_monai(demo, demo_x):
    mine, info, ctx = ours(demo, demo_x, "gradcam")
    assert info["layer"] == "features" and ctx.passes == {"forward": 1, "backward": 1}
    layer = demo.network.features
    ref = LayerGradCam(demo.network, layer).attribute(demo_x.clone(), target=LESION, relu_attributions=True)
    ref = F.interpolate(ref, size=demo_x.shape[2:], mode="trilinear", align_corners=False)
    assert pearson(mine, ref) >= 0.999
    monai_map = GradCAM(clone(demo.network), target_layers="features", postprocessing=lambda m: m)(demo_x.clone(), class_idx=LESION)
    assert pearson(mine, monai_map) >= 0.999


def test_monai_default_cam_normaliser_inverts_the_map(demo, demo_x):
    mine, _, _ = ours(demo, demo_x, "gradcam")
    monai_default = GradCAM(clone(demo.network), target_layers="features")(demo_x.clone(), class_idx=LESION)
    assert pearson(mine, monai_default) < -0.99  # MONAI maps the maximum to 0 and the minimum to 1
    assert float(mine.flatten().argmax()) != float(monai_default.flatten().argmax())


def average_pooled(demo):
    """The demo network with global average instead of max pooling (same weights)."""
    net = SynthLesionNet()
    net.load_state_dict(demo.network.state_dict())
    net.pool = nn.AdaptiveAvgPool3d(1)
    return load_model(net.eval(), device=None)


def test_gradcampp_matches_monai(demo, demo_x):
    mine, _, _ = ours(demo, demo_x, "gradcampp")
    ref = GradCAMpp(clone(demo.network), target_layers="features", postprocessing=lambda m: m)(demo_x.clone(), class_idx=LESION)
    assert pearson(mine, ref) >= 0.99


def test_monai_gradcampp_epsilon_swamps_small_gradients(demo, demo_x):
    """MONAI adds 1e-7 to the alpha denominator; behind global average pooling over thousands of voxels
    the gradients are ~1e-5 and the epsilon dominates. The closed form in float64 agrees with ours."""
    gap = average_pooled(demo)
    mine, _, _ = ours(gap, demo_x, "gradcampp")
    ref = GradCAMpp(clone(gap.network), target_layers="features", postprocessing=lambda m: m)(demo_x.clone(), class_idx=LESION)
    net = gap.network.double()
    acts = net.features(demo_x.double())
    acts.retain_grad()
    net.fc(net.flatten(net.pool(acts)))[:, LESION].sum().backward()
    g, a = acts.grad, acts.detach()
    alpha = g**2 / (2 * g**2 + (a * g**3).sum((2, 3, 4), keepdim=True))
    cam = F.relu(((alpha * F.relu(g)).sum((2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=demo_x.shape[2:], mode="trilinear", align_corners=False)
    cam = cam.float()
    assert torch.allclose(mine, cam, rtol=1e-3, atol=1e-4 * float(cam.max()))
    assert float(g.abs().max()) < 1e-3  # small gradients: where MONAI's epsilon matters
    assert float((ref - cam).norm() / cam.norm()) > 0.5  # MONAI's map is not the closed form


def test_cam_matches_monai_and_equals_class_weights_on_features(demo, demo_x):
    mine, info, _ = ours(demo, demo_x, "cam")
    assert info["pooling"] == "max"
    ref = CAM(clone(demo.network), target_layers="features", fc_layers="fc", postprocessing=lambda m: m)(
        demo_x.clone(), class_idx=torch.tensor([LESION]))  # MONAI's CAM fails on an int class_idx
    assert pearson(mine, ref) >= 0.999
    with torch.no_grad():  # exact: w_lesion . A(v) at the layer's own resolution
        acts = demo.network.features(demo_x)
        direct = torch.einsum("c,ncxyz->nxyz", demo.network.fc.weight[LESION], acts)[:, None]
        direct = F.interpolate(direct, size=demo_x.shape[2:], mode="trilinear", align_corners=False)
    assert torch.allclose(mine, direct, rtol=1e-4, atol=1e-5)


def test_cam_on_global_average_pooling_matches_monai(demo, demo_x):
    gap = average_pooled(demo)
    mine, info, _ = ours(gap, demo_x, "cam")
    ref = CAM(clone(gap.network), target_layers="features", fc_layers="fc", postprocessing=lambda m: m)(
        demo_x.clone(), class_idx=torch.tensor([LESION]))
    assert info["pooling"] == "average" and pearson(mine, ref) >= 0.999


def test_cam_refuses_a_head_that_is_not_pooling_plus_linear(demo_x):
    class MLPHead(SynthLesionNet):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(32, 32)

        def forward(self, x):
            return self.fc(torch.tanh(self.hidden(self.flatten(self.pool(self.features(x))))))

    from xaiexplain import XAIError
    torch.manual_seed(0)
    with pytest.raises(XAIError, match="global average or max pooling followed by one linear layer"):
        ours(load_model(MLPHead().eval(), device=None), demo_x, "cam")


# --- guided backprop / DeconvNet: Captum is right on nn.ReLU networks, wrong on PReLU/functional ones ---

@pytest.fixture(scope="module")
def relu_net():
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=8,
                      block_config=(2, 2, 2, 2)).eval()
    return load_model(net, device=None)


@pytest.fixture(scope="module")
def small_x():
    torch.manual_seed(1)
    return torch.randn(2, 1, 32, 32, 32)


def test_guided_backprop_and_deconvnet_match_captum_on_relu_network(relu_net, small_x):
    for method, ref_cls in (("guided-backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        mine, _, _ = ours(relu_net, small_x, method)
        ref = ref_cls(relu_net.network).attribute(small_x.clone(), target=LESION)
        for n in range(2):
            assert pearson(mine[n], ref[n]) >= 0.999, method


def test_guided_gradcam_matches_captum(relu_net):
    small_x = torch.randn(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(5))
    mine, info, _ = ours(relu_net, small_x, "guided-gradcam")
    assert info["layer"] == "class_layers.relu"
    layer = relu_net.network.class_layers.relu
    ref = GuidedGradCam(relu_net.network, layer).attribute(small_x.clone(), target=LESION,
                                                           interpolate_mode="trilinear")
    for n in range(2):
        assert pearson(mine[n], ref[n]) >= 0.99


def test_captum_and_monai_guided_backprop_miss_prelu_where_ours_does_not(demo, demo_x):
    # A MONAI PReLU network (the demo's residual units, no ReLU anywhere):
    torch.manual_seed(4)
    prelu_net = nn.Sequential(demo.network.features[:4], nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, 2)).eval()
    model = load_model(prelu_net, device=None)
    plain, _, _ = ours(model, demo_x, "gradient")
    mine, _, _ = ours(model, demo_x, "guided-backprop")
    captum = GuidedBackprop(prelu_net).attribute(demo_x.clone(), target=LESION)
    monai = GuidedBackpropGrad(clone(prelu_net))(demo_x.clone(), index=LESION)
    # Captum (nn.ReLU hooks) and MONAI (modules named "relu") return the plain gradient:
    assert pearson(captum, plain) > 0.9999 and pearson(monai, plain) > 0.9999
    # ours rectifies the backward signal at every PReLU, which changes the map
    assert pearson(mine, plain) < 0.9
    # on the demo model (PReLU units + one ReLU) Captum rectifies only the ReLU, MONAI nothing
    full, _, _ = ours(demo, demo_x, "guided-backprop")
    captum_demo = GuidedBackprop(demo.network).attribute(demo_x.clone(), target=LESION)
    monai_demo = GuidedBackpropGrad(clone(demo.network))(demo_x.clone(), index=LESION)
    assert pearson(captum_demo, full) < 0.99 and pearson(monai_demo, full) < 0.99


class FunctionalReLU(nn.Module):
    """The same network written twice: ReLU as modules, and as F.relu calls inside forward."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv3d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv3d(6, 8, 3, stride=2, padding=1)
        self.act1, self.act2 = nn.ReLU(inplace=True), nn.ReLU()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        if self.functional:
            h = F.relu(self.conv2(F.relu(self.conv1(x))))
        else:
            h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(h.mean((2, 3, 4)))


def test_guided_backprop_sees_functional_relu_calls(small_x):
    torch.manual_seed(2)
    modules = FunctionalReLU(False).eval()
    functional = FunctionalReLU(True).eval()
    functional.load_state_dict(modules.state_dict())
    a, _, _ = ours(load_model(modules, device=None), small_x, "guided-backprop")
    b, _, _ = ours(load_model(functional, device=None), small_x, "guided-backprop")
    ref = GuidedBackprop(modules).attribute(small_x.clone(), target=LESION)
    assert torch.allclose(a, b, atol=1e-7) and pearson(a, ref) > 0.9999
    captum_functional = GuidedBackprop(functional).attribute(small_x.clone(), target=LESION)
    assert pearson(captum_functional, b) < 0.99  # Captum cannot see F.relu


def test_leaky_relu_instance_norm_rule_matches_an_independent_hook_implementation(small_x):
    """On a MONAI network with InstanceNorm + LeakyReLU, guided backprop equals f'(x)*max(grad,0) done with hooks."""
    from monai.networks.blocks import Convolution, ResidualUnit

    torch.manual_seed(3)
    block = dict(spatial_dims=3, norm="instance", act=("leakyrelu", {"negative_slope": 0.1}))
    net = nn.Sequential(Convolution(in_channels=1, out_channels=4, **block),
                        ResidualUnit(in_channels=4, out_channels=8, strides=2, **block),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    mine, _, _ = ours(load_model(net, device=None), small_x, "guided-backprop")

    def guided_hook(module, grad_input, grad_output):
        x = module._saved_input
        slope = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, module.negative_slope))
        return (slope * grad_output[0].clamp(min=0),)

    handles = []
    for m in net.modules():
        if isinstance(m, nn.LeakyReLU):
            m.inplace = False
            handles.append(m.register_forward_pre_hook(lambda mod, inp: setattr(mod, "_saved_input", inp[0].detach())))
            handles.append(m.register_full_backward_hook(guided_hook))
    x = small_x.clone().requires_grad_(True)
    net(x)[:, LESION].sum().backward()
    for h in handles:
        h.remove()
    assert pearson(mine, x.grad) > 0.9999


def test_batch_of_two_equals_two_single_runs(demo, demo_x):
    other = torch.flip(demo_x, dims=[2])  # a second, different sample
    batch = torch.cat([demo_x, other])
    for method in ("gradient", "gradcam", "guided-backprop", "integrated-gradients"):
        both, _, _ = ours(demo, batch, method, params={"steps": 8} if method == "integrated-gradients" else None)
        for n, single in enumerate((demo_x, other)):
            alone, _, _ = ours(demo, single, method, params={"steps": 8} if method == "integrated-gradients" else None)
            assert torch.allclose(both[n], alone[0], rtol=1e-3, atol=1e-4 * float(alone.abs().max())), method


def test_cam_layer_can_be_chosen_by_name(demo, demo_x):
    auto, info_auto, _ = ours(demo, demo_x, "gradcam")
    early, info, _ = ours(demo, demo_x, "gradcam", layer="features.0")
    assert info_auto["layer"] == "features" and info["layer"] == "features.0"
    assert info["layer_shape"] == [16, 32, 32, 32] and early.shape == auto.shape
    layer = demo.network.features[0]
    ref = LayerGradCam(demo.network, layer).attribute(demo_x.clone(), target=LESION, relu_attributions=True)
    ref = F.interpolate(ref, size=demo_x.shape[2:], mode="trilinear", align_corners=False)
    assert pearson(early, ref) >= 0.999
