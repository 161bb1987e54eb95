"""Targets (class, contrast, class in a region) and the progress / cancel contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from xaiexplain import ContrastTarget, Volume, XAIError, attribute, explain
from xaiexplain.methods import Cancelled


class LinearSegmenter(nn.Module):
    """out[c] = w_c * x + b_c voxelwise: d mean_{ROI} out[c] / dx = w_c / |ROI| inside the ROI, 0 outside."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([0.5, 2.0, -1.0]).view(3, 1, 1, 1, 1)
            self.conv.bias[:] = torch.tensor([0.0, -1.0, 0.2])

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return Volume(rng.random((1, 12, 10, 8), dtype=np.float32) + 0.1, [1.0, 1.5, 2.0], [3.0, -4.0, 5.0])


def test_segmentation_target_in_a_given_region_is_exact(volume):
    roi = np.zeros((1, 12, 10, 8), np.float32)
    roi[0, 2:5, 3:7, 1:4] = 1
    res = explain(LinearSegmenter(), volume, "gradient", target=1, roi=volume.with_array(roi))[0]
    expected = roi[0] * 2.0 / roi.sum()
    assert np.allclose(res.array, expected, atol=1e-7)
    assert res.target == {"kind": "segmentation", "class": 1, "name": "1", "region": "given mask",
                          "region_voxels_model_space": 36}
    assert res.prediction["task"] == "segmentation"


def test_segmentation_target_on_the_predicted_mask(volume):
    net = LinearSegmenter()
    res = explain(net, volume, "gradient", target=1, roi="predicted")[0]
    with torch.no_grad():
        predicted = (net(torch.as_tensor(volume.array)[None]).argmax(1)[0] == 1).numpy()
    assert predicted.sum() > 0
    assert np.allclose(res.array, predicted * 2.0 / predicted.sum(), atol=1e-7)


def test_one_connected_component_of_the_prediction_is_a_target(volume):
    """'This lesion': the N-th largest 26-connected component of the predicted class, and nothing of the others."""
    array = np.full((1, 12, 10, 8), 0.1, np.float32)
    array[0, 1:4, 1:4, 1:4] = 1.0  # 27 voxels: component 1
    array[0, 7:9, 6:8, 4:6] = 1.0  # 8 voxels: component 2 (class 1 where 2x - 1 beats 0.5x and 0.2 - x)
    blobs = volume.with_array(array)
    first, second = (explain(LinearSegmenter(), blobs, "gradient", target=1, roi=f"component:{n}")[0]
                     for n in (1, 2))
    big, small = np.zeros((12, 10, 8), bool), np.zeros((12, 10, 8), bool)
    big[1:4, 1:4, 1:4], small[7:9, 6:8, 4:6] = True, True
    assert np.allclose(first.array, big * 2.0 / 27, atol=1e-7)
    assert np.allclose(second.array, small * 2.0 / 8, atol=1e-7)
    assert first.target["region"] == "connected component 1 (by size, 26-connected) of the predicted mask, of 2"
    assert first.target["region_voxels_model_space"] == 27
    with pytest.raises(XAIError, match=r"predicted class 1 has 2 connected components, so no component 3\. "
                                       r"Give --roi component:1 to component:2"):
        explain(LinearSegmenter(), blobs, "gradient", target=1, roi="component:3")
    with pytest.raises(XAIError, match=r"--roi component:x: the component is not a whole number of 1 or more"):
        explain(LinearSegmenter(), blobs, "gradient", target=1, roi="component:x")


def test_segmentation_needs_a_target_and_a_non_empty_region(volume):
    with pytest.raises(XAIError, match="needs a target class"):
        explain(LinearSegmenter(), volume, "gradient")
    empty = volume.with_array(np.zeros((1, 12, 10, 8), np.float32))
    with pytest.raises(XAIError, match="region is empty"):
        explain(LinearSegmenter(), volume, "gradient", target=1, roi=empty)
    with pytest.raises(XAIError, match="does not apply to segmentation"):
        explain(LinearSegmenter(), volume, "cam", target=1, roi="predicted")


def test_monai_unet_region_target_with_gradcam():
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
               num_res_units=1).eval()  # PReLU + InstanceNorm + residual units
    vol = Volume(np.random.default_rng(1).random((1, 32, 32, 32), dtype=np.float32))
    roi = np.zeros((1, 32, 32, 32), np.float32)
    roi[0, 8:16, 8:16, 8:16] = 1
    for method in ("gradcam", "guided-backprop", "integrated-gradients"):
        res = explain(net, vol, method, target=1, roi=vol.with_array(roi), params={"ig": {"steps": 4}}
                      if method == "integrated-gradients" else None)[0]
        assert res.array.shape == (32, 32, 32) and np.isfinite(res.array).all() and np.abs(res.array).max() > 0


def test_contrast_is_the_difference_of_the_two_class_gradients(demo, demo_x):
    a, _, _ = attribute(demo, demo_x, "gradient", target=1)
    b, _, _ = attribute(demo, demo_x, "gradient", target=0)
    c, _, _ = attribute(demo, demo_x, "gradient", target=ContrastTarget(1, 0))
    assert torch.allclose(c, a - b, atol=1e-6 * float(c.abs().max()))


def test_predicted_class_is_the_default_target(demo, positive_case):
    res = explain(demo, positive_case.volume, "gradcam")[0]
    assert res.target["class"] == res.prediction["predicted_class"] and res.target["chosen"] == "predicted"


def test_progress_is_reported_and_cancel_stops_between_batches(demo, demo_x):
    seen = []
    attribute(demo, demo_x, "smoothgrad", target=1, params={"samples": 6, "batch_size": 2},
              progress=lambda f, m: seen.append(f))
    assert seen == pytest.approx([2 / 6, 4 / 6, 1.0])
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(Cancelled):
        attribute(demo, demo_x, "integrated-gradients", target=1, params={"steps": 8, "batch_size": 2},
                  cancel=cancel)
    assert len(calls) == 2  # stopped after the second batch, not at the end
