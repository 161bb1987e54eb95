"""CAM layers: the automatic layer of a segmentation network feeds its head; layer axes are checked and aligned.

Ground truths are built, not assumed: a model that reorders its input axes inside ``forward`` shares its
modules with a plain model, so the plain model's map on the reordered input, put back on the original axes,
is what the reordering model's map must be. References use their own hooks, not the engine's.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import pearson
from monai.networks import nets

from xaiexplain import attribute, get_method
from xaiexplain.core.targets import SegmentationTarget
from xaiexplain.errors import XAIError
from xaiexplain.methods.machinery.layer_grid import PROBES

CAM_METHODS = ("gradcam", "gradcampp", "cam", "guided-gradcam")


class Classifier(nn.Module):
    """Convs to a grid ``stride`` times coarser, global average pooling, one linear layer (CAM applies)."""

    def __init__(self, stride: int = 2):
        super().__init__()
        torch.manual_seed(0)
        layers, channels = [nn.Conv3d(1, 8, 3, padding=1), nn.ReLU()], 8
        while stride > 1:
            layers += [nn.Conv3d(channels, 16, 3, stride=2, padding=1), nn.ReLU()]
            channels, stride = 16, stride // 2
        self.features = nn.Sequential(*layers, nn.Conv3d(channels, 16, 3, padding=1), nn.ReLU())
        self.pool, self.fc = nn.AdaptiveAvgPool3d(1), nn.Linear(16, 2)
        with torch.no_grad():
            self.fc.weight[1].abs_()  # class 1 gains from every channel: its Grad-CAM is never empty

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class Reordered(nn.Module):
    """``body`` behind an axis reordering (or a reshape) done inside ``forward``, as some CT encoders do."""

    def __init__(self, body: nn.Module, reorder):
        super().__init__()
        self.body, self.reorder = body, reorder

    def forward(self, x):
        return self.body(self.reorder(x))


def _unet():
    return nets.UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="instance")


def _segresnet(classes):
    return nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=classes, init_filters=4,
                          norm=("group", {"num_groups": 2}), blocks_down=(1, 1, 1), blocks_up=(1, 1))


SEGMENTERS = {  # name: (network, expected layer, expected head as named in layer_choice)
    "unet": (_unet, "model.1", "model.2"),
    "segresnet": (lambda: _segresnet(3), "up_layers.1", "conv_final"),
    "dynunet": (lambda: nets.DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                                     filters=[4, 8, 16], norm_name="instance", res_block=True),
                "skip_layers", "output_block"),
    # the decoder has as many channels as there are classes: the 1x1 head conv still marks where the head starts
    "segresnet-4-classes": (lambda: _segresnet(4), "up_layers.1", "conv_final"),
    # a 5x5 conv to the classes, then a 1x1 conv from classes to classes: both head
    "vnet": (lambda: nets.VNet(3, 1, 3, dropout_prob_down=0.0, dropout_prob_up=(0.0, 0.0)), "up_tr32", "out_tr"),
    "unet-softmax": (lambda: nn.Sequential(_unet(), nn.Softmax(dim=1)), "0.model.1", "0.model.2, 1"),
}

REORDERINGS = {  # name: (reorder inside forward, its inverse on maps, input shape, stride, expected info["axes"])
    "permute-zyx": (lambda t: t.permute(0, 1, 4, 3, 2), lambda t: t.permute(0, 1, 4, 3, 2), (32, 32, 32), 2,
                    "aligned: layer axes (2, 1, 0)"),
    "transpose-2-4": (lambda t: t.transpose(2, 4), lambda t: t.transpose(2, 4), (32, 24, 16), 2,
                      "aligned: layer axes (2, 1, 0)"),
    "cyclic": (lambda t: t.permute(0, 1, 3, 4, 2), lambda t: t.permute(0, 1, 4, 2, 3), (32, 24, 16), 4,
               "aligned: layer axes (2, 0, 1)"),
    "flip-y": (lambda t: t.flip(3), lambda t: t.flip(3), (32, 32, 32), 8,
               "aligned: layer axes (0, 1, 2), reversed (1,)"),
    "permute-and-flip": (lambda t: t.permute(0, 1, 4, 3, 2).flip(2), lambda t: t.flip(2).permute(0, 1, 4, 3, 2),
                         (32, 24, 16), 2, "aligned: layer axes (2, 1, 0), reversed (0,)"),
}

_SHUFFLE = torch.randperm(32 ** 3, generator=torch.Generator().manual_seed(1))
SCRAMBLES = {  # name: (reshape inside forward, input shape, stride)
    # reading (X, Y, Z) memory as (Z, Y, X): view instead of permute
    "view-instead-of-permute": (lambda t: t.reshape(t.shape[0], 1, 16, 24, 32), (32, 24, 16), 1),
    "reshape": (lambda t: t.reshape(t.shape[0], 1, 64, 16, 32), (32, 32, 32), 2),
    "shuffle": (lambda t: t.flatten(2)[:, :, _SHUFFLE].reshape(t.shape), (32, 32, 32), 1),
}


def _input(shape, seed=0):
    """Noise with a bright blob off every symmetry axis: maps are far from symmetric."""
    x = 0.3 * torch.rand((1, 1) + tuple(shape), generator=torch.Generator().manual_seed(seed))
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    centre = [0.3 * shape[0], 0.65 * shape[1], 0.4 * shape[2]]
    return x + torch.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre)) / 18.0)


def _region(shape=(32, 32, 32)):
    region = torch.zeros(shape, dtype=torch.bool)
    region[8:20, 10:22, 12:24] = True
    return region


def plain_gradcam(net: nn.Module, x: torch.Tensor, layer: str, score) -> torch.Tensor:
    """Grad-CAM of ``layer`` interpolated straight onto the input (what the engine did before the axis check)."""
    modules = dict(net.named_modules())
    inplace = [m for m in modules.values() if getattr(m, "inplace", False) is True]
    for m in inplace:
        m.inplace = False
    store = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.enable_grad():
            out = net(x.clone().requires_grad_(True))
            (grad,) = torch.autograd.grad(score(out).sum(), store[-1])
    finally:
        handle.remove()
        for m in inplace:
            m.inplace = True
    cam = F.relu((grad.mean((2, 3, 4), keepdim=True) * store[-1]).sum(1, keepdim=True)).detach()
    return F.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)


def _class_score(out):
    return out[:, 1]


# --- 1. the automatic layer ---

def test_demo_keeps_its_layer_and_map(demo, demo_x):
    maps, info, ctx = attribute(demo, demo_x, "gradcam", target=1)
    assert info["layer"] == "features" and info["layer_choice"] == "automatic: last spatial feature map"
    assert info["axes"] == "verified" and info["axes_check"].startswith("graph: ")  # no probe needed
    assert pearson(maps, plain_gradcam(demo.network, demo_x, "features", _class_score)) > 0.9999
    assert ctx.passes == get_method("gradcam").cost({}) == {"forward": 1, "backward": 1}


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_segmentation_layer_is_the_feature_map_before_the_head(name):
    make, expected, head = SEGMENTERS[name]
    torch.manual_seed(0)
    net = make().eval()
    x, target = _input((32, 32, 32)), SegmentationTarget(1, _region())
    maps, info, _ = attribute(net, x, "gradcam", target=target)
    assert info["layer"] == expected
    assert info["layer_choice"] == f"automatic: last spatial feature map before the output head ({head})"
    assert info["layer_shape"][0] != 3 or name == "segresnet-4-classes"  # not the 3-class logits
    assert info["axes"] == "verified" and info["axes_check"].startswith("graph: ")
    mask = _region().float()
    reference = plain_gradcam(net, x, expected, lambda out: (out[:, 1] * mask).sum((1, 2, 3)) / mask.sum())
    assert float(reference.std()) > 0 and pearson(maps, reference) > 0.9999


def test_given_layer_is_used_and_recorded():
    body, x = Classifier(4).eval(), _input((32, 32, 32))
    maps, info, _ = attribute(body, x, "gradcam", target=1, layer="features.2")
    assert info["layer"] == "features.2" and info["layer_choice"] == "given" and info["axes"] == "verified"
    assert pearson(maps, plain_gradcam(body, x, "features.2", _class_score)) > 0.9999


def test_segmentation_network_with_only_a_head_is_refused():
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.Softmax(dim=1)).eval()
    with pytest.raises(XAIError, match="no spatial feature map before its output head"):
        attribute(net, _input((16, 16, 16)), "gradcam", target=SegmentationTarget(1, _region((16, 16, 16))))


# --- 2. the layer's axes ---

def _reordered_and_truth(name, method="gradcam"):
    """The reordering model, its input, the known map and the expected info["axes"]."""
    reorder, restore, shape, stride, axes = REORDERINGS[name]
    body = Classifier(stride).eval()
    x = _input(shape)
    truth, _, _ = attribute(body, reorder(x), method, target=1)  # the plain model on the reordered input
    assert float(truth.std()) > 0
    return Reordered(body, reorder).eval(), x, restore(truth), axes


@pytest.mark.parametrize("name", list(REORDERINGS))
def test_axis_reordering_models_get_aligned_gradcam(name):
    net, x, truth, axes = _reordered_and_truth(name)
    maps, info, _ = attribute(net, x, "gradcam", target=1)
    assert pearson(maps, truth) > 0.99
    assert info["layer"] == "body.features" and info["axes"] == axes and info["axes_check"].startswith("probe: ")
    # what plain interpolation gave: another map, silently
    assert pearson(plain_gradcam(net, x, "body.features", _class_score), truth) < 0.9


@pytest.mark.parametrize("method", ["cam", "gradcampp", "guided-gradcam"])
def test_every_cam_method_aligns(method):
    net, x, truth, axes = _reordered_and_truth("cyclic", method)
    maps, info, _ = attribute(net, x, method, target=1)
    assert pearson(maps, truth) > 0.99 and info["axes"] == axes


def _identity(t):
    return t.permute(0, 1, 2, 3, 4)  # a permute node in the graph, no change: the probe has to vouch


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_probe_works_on_strided_layers(stride):
    body = Classifier(stride).eval()
    x = _input((32, 32, 32))
    reference = plain_gradcam(body, x, "features", _class_score)
    maps, info, ctx = attribute(Reordered(body, _identity).eval(), x, "gradcam", target=1)
    assert info["layer_shape"][1:] == [32 // stride] * 3 and info["axes"] == "verified"
    assert info["axes_check"].startswith("probe: PermuteBackward0")
    assert pearson(maps, reference) > 0.9999 and ctx.passes == {"forward": 1, "backward": 1 + PROBES}
    swapped = Reordered(body, lambda t: t.transpose(2, 4)).eval()
    maps, info, _ = attribute(swapped, x, "gradcam", target=1)
    truth, _, _ = attribute(body, x.transpose(2, 4), "gradcam", target=1)
    assert info["axes"] == "aligned: layer axes (2, 1, 0)" and pearson(maps, truth.transpose(2, 4)) > 0.99


@pytest.mark.parametrize("name", ["demo", "unet", "segresnet", "dynunet"])
def test_probe_verifies_plain_networks(name, demo, demo_x):
    """Behind a no-op permute the probe runs, finds the axes in place and changes nothing."""
    if name == "demo":
        net, x, layer, target, score = demo.network, demo_x, "features", 1, _class_score
    else:
        make, layer, _ = SEGMENTERS[name]
        torch.manual_seed(0)
        net, x, mask = make().eval(), _input((32, 32, 32)), _region().float()
        target = SegmentationTarget(1, _region())

        def score(out):
            return (out[:, 1] * mask).sum((1, 2, 3)) / mask.sum()
    maps, info, _ = attribute(Reordered(net, _identity).eval(), x, "gradcam", target=target)
    assert info["layer"] == f"body.{layer}" and info["axes"] == "verified"
    assert info["axes_check"].startswith("probe: ")
    assert pearson(maps, plain_gradcam(net, x, layer, score)) > 0.9999


@pytest.mark.parametrize("name", list(SCRAMBLES))
def test_scrambling_reshape_is_refused(name):
    reorder, shape, stride = SCRAMBLES[name]
    net = Reordered(Classifier(stride), reorder).eval()
    x = _input(shape)
    for method in CAM_METHODS if name == "view-instead-of-permute" else ("gradcam",):
        with pytest.raises(XAIError, match="grid of layer 'body.features' does not match the input's axes") as err:
            attribute(net, x, method, target=1)
        assert "gradient or integrated-gradients" in str(err.value), method


class AxisKeeping(nn.Module):
    """Operations that keep the axes although they reshape or repeat: the graph vouches, no probe runs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.gate, self.conv2 = nn.Conv3d(2, 4, 3, padding=1), nn.Linear(4, 4), nn.Conv3d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = F.instance_norm(self.conv(x.repeat(1, 2, 1, 1, 1)))  # instance norm: views that keep space
        gate = torch.sigmoid(self.gate(h.mean((2, 3, 4)))).view(-1, 4, 1, 1, 1)  # squeeze-excitation
        h = torch.cat([h * gate, F.interpolate(F.avg_pool3d(h, 2), scale_factor=2.0)], 1)[:, :, 1:-1, 1:-1, 1:-1]
        h = F.relu(self.conv2(F.pad(h, (1, 1, 1, 1, 1, 1))))
        return self.fc(h.flatten(2).amax(2))


def test_graph_vouches_for_axis_keeping_operations():
    _, info, ctx = attribute(AxisKeeping().eval(), _input((16, 16, 16)), "gradcam", target=1)
    assert info["axes"] == "verified" and info["axes_check"].startswith("graph: ") and ctx.passes["backward"] == 1


def test_axes_are_checked_on_a_given_layer_too():
    net = Reordered(Classifier(2), lambda t: t.permute(0, 1, 4, 3, 2)).eval()
    _, info, _ = attribute(net, _input((32, 24, 16)), "gradcam", target=1, layer="body.features.0")
    assert info["layer_choice"] == "given" and info["axes"] == "aligned: layer axes (2, 1, 0)"


def test_stated_cost_is_what_runs():
    """The cost model states the graph check; a probe adds PROBES partial backward passes, counted."""
    body, x = Classifier(2).eval(), _input((16, 16, 16))
    for method in CAM_METHODS:
        cost = get_method(method).cost({})
        _, _, ctx = attribute(body, x, method, target=1)
        assert ctx.passes == cost, method
        _, _, ctx = attribute(Reordered(body, lambda t: t.flip(2)).eval(), x, method, target=1)
        assert ctx.passes == {"forward": cost["forward"], "backward": cost["backward"] + PROBES}, method
