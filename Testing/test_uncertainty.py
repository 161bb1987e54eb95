"""Probability, entropy and uncertainty maps of segmentation networks: exact against their definitions on small
networks, and on a real one (deepbet on Colin27) highest where the brain's boundary is."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from scipy import ndimage
from torch import nn

from xaiexplain import XAIError, attribute, explain, load_model, prepare_case
from xaiexplain.core.targets import SegmentationTarget
from xaiexplain.real import deepbet
from xaiexplain.real.material import colin27, deepbet_model

UNCERTAINTY = ["probability", "entropy", "tta-uncertainty", "mc-dropout"]
TARGET = SegmentationTarget(1, None)


def _input(size=24, seed=0):
    return torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(seed))


def _unet(dropout=0.0):
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0, dropout=dropout).eval()


def test_probability_and_entropy_are_their_definitions_voxel_by_voxel():
    net, x = _unet(), _input()
    p = torch.softmax(net(x), 1)
    probability, info, ctx = attribute(net, x, "probability", target=TARGET)
    assert probability.shape == (1, 1, *x.shape[2:]) and torch.allclose(probability[:, 0], p[:, 1], atol=1e-6)
    entropy, einfo, _ = attribute(net, x, "entropy", target=TARGET)
    expected = -(p * p.log()).sum(1) / math.log(3)
    assert torch.allclose(entropy[:, 0], expected, atol=1e-5) and einfo["classes"] == 3
    assert ctx.passes == {"forward": 0, "backward": 0}  # the case's own output: no extra pass


def test_flips_leave_a_voxelwise_network_certain_and_are_counted():
    pointwise = nn.Sequential(nn.Conv3d(1, 4, 1), nn.ReLU(), nn.Conv3d(4, 2, 1)).eval()  # commutes with flips
    spread, info, ctx = attribute(pointwise, _input(), "tta-uncertainty", target=TARGET)
    assert float(spread.abs().max()) < 1e-6 and info["augmentations"] == 8 and ctx.passes["forward"] == 8
    spread, _, _ = attribute(_unet(), _input(), "tta-uncertainty", target=TARGET)  # strided: not flip-invariant
    assert float(spread.max()) > 1e-3


def test_monte_carlo_dropout_is_seeded_and_leaves_the_network_as_it_was():
    net = _unet(dropout=0.3)
    first, info, ctx = attribute(net, _input(), "mc-dropout", target=TARGET, params={"samples": 8}, seed=3)
    again, _, _ = attribute(net, _input(), "mc-dropout", target=TARGET, params={"samples": 8}, seed=3)
    other, _, _ = attribute(net, _input(), "mc-dropout", target=TARGET, params={"samples": 8}, seed=4)
    assert torch.equal(first, again) and not torch.equal(first, other) and float(first.max()) > 1e-3
    assert info["dropout_layers"] > 0 and ctx.passes["forward"] == 8
    assert not any(m.training for m in net.modules())


@pytest.mark.parametrize("method", ["mc-dropout"])
def test_monte_carlo_dropout_without_dropout_is_refused(method):
    with pytest.raises(XAIError, match="no dropout layer") as err:
        attribute(_unet(dropout=0.0), _input(), method, target=TARGET)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", UNCERTAINTY)
def test_a_classifier_has_no_voxelwise_prediction_to_map(demo, demo_x, method):
    with pytest.raises(XAIError, match="needs a segmentation model|maps a segmentation network's voxelwise output"):
        attribute(demo, demo_x, method, target=1)


def test_on_deepbet_the_uncertainty_is_highest_at_the_brain_boundary(tmp_path):
    try:
        scan = colin27("ch2")
        deepbet_model()  # installed?
    except XAIError as missing:
        pytest.skip(str(missing))
    case = prepare_case(load_model(deepbet.write_model(tmp_path), device="cpu"), str(scan), device="cpu")
    own = case.to_input_grid(case.output()[0, 1:2])[0]
    brain = own > 0.5
    shell = ndimage.binary_dilation(brain, iterations=2) & ~ndimage.binary_erosion(brain, iterations=2)
    interior = ndimage.binary_erosion(brain, iterations=6)
    maps = {r.method: r for r in explain(None, case, UNCERTAINTY[:3], target="brain")}
    assert np.allclose(maps["probability"].array, own, atol=1e-6)  # the network's own softmax, on ch2's grid
    for method, ratio in (("entropy", 10), ("tta-uncertainty", 3)):  # measured 30x and 7x
        values = maps[method].array
        assert values.min() >= 0 and values.max() <= 1
        print(f"{method}: boundary shell {values[shell].mean():.3f}, interior {values[interior].mean():.4f}")
        assert values[shell].mean() > ratio * values[interior].mean()
    with pytest.raises(XAIError, match="no dropout layer"):  # deepbet has none
        explain(None, case, ["mc-dropout"], target="brain")


def test_prediction_maps_are_the_uncertainty_family_and_slicer_colours_them_apart(harness, positive_case):
    from XAIExplainLib import colormaps, display, volumenodes

    from xaiexplain.methods import REGISTRY
    from xaiexplain.protocol import PREDICTION_MAPS

    assert set(PREDICTION_MAPS) == {name for name, m in REGISTRY.items() if m.family == "uncertainty"}
    harness.clear()
    try:
        nodes = {}
        for method in ("entropy", "gradient"):
            node = volumenodes.addVolumeNode(harness.scene, np.abs(positive_case.volume.array[0]), method,
                                             volume=positive_case.volume)
            display.markResult(node, method=method, signed=False)
            nodes[method] = display.colorNodeFor(harness.scene, node).GetName()
        assert nodes == {"entropy": colormaps.VIRIDIS_NAME, "gradient": colormaps.INFERNO_NAME}
        rgb = colormaps.viridisRgb()
        assert rgb.shape == (256, 3) and rgb[0, 2] > rgb[0, 1] and rgb[-1, 0] > 0.9  # purple to yellow
    finally:
        harness.clear()
