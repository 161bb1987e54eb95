"""Sliding-window explanation: MONAI's inferer reproduced, and every map explaining its blended output."""
from __future__ import annotations

import json

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from torch import nn

from xaiexplain import load_model
from xaiexplain.core.bundle import write_bundle
from xaiexplain.core.attribute import attribute
from xaiexplain.core.targets import SegmentationTarget
from xaiexplain.core.volume import Volume
from xaiexplain.errors import XAIError

SHAPE = (40, 36, 30)
ROI = (16, 16, 16)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def roi():
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[5:12, 8:14, 3:9] = True
    return mask


def windowed(network, mode="gaussian", **more):
    return load_model(network, device="cpu", inferer={"roi_size": list(ROI), "overlap": 0.5, "mode": mode, **more})


def monai_output(network, x, mode="gaussian"):
    return sliding_window_inference(x, ROI, 4, network, overlap=0.5, mode=mode)


def region_score(out, roi, index=2):
    return (out[0, index] * roi).sum() / roi.sum()


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_the_blended_output_is_monai_sliding_window_inference(unet, x, mode):
    model = windowed(unet, mode, sw_batch_size=3)
    assert torch.equal(model.output(x), monai_output(unet, x, mode))
    small = torch.rand(1, 1, 10, 20, 12)  # smaller than a window: padded as MONAI pads it
    assert torch.equal(model.output(small), monai_output(unet, small, mode))


class Seen(nn.Module):
    """The network, recording the spatial shape of every batch it is called on."""

    def __init__(self, network):
        super().__init__()
        self.network, self.shapes = network, []

    def forward(self, batch):
        self.shapes.append(tuple(batch.shape[2:]))
        return self.network(batch)


def test_the_gradient_is_the_gradient_through_monai_inference_one_window_at_a_time(unet, x, roi):
    seen = Seen(unet)
    model = windowed(seen)
    target = SegmentationTarget(2, roi)
    ours, info, _ = attribute(model, x, "gradient", target=target)
    inputs = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(region_score(monai_output(unet, inputs), roi), inputs)
    assert float((ours - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    assert set(seen.shapes) == {ROI}  # never a whole-volume pass, so never a whole-volume graph
    # the backward passes ran only on the windows holding the region (the other calls: the reference output)
    layout = model.windows.layout(x)
    on_target = layout.touching(torch.nn.functional.pad(roi, layout.pad) if any(layout.pad) else roi)
    assert len(seen.shapes) == len(layout.slices) + len(on_target)
    assert 0 < len(on_target) < len(layout.slices) // 2
    assert info["sliding_window"]["windows"] == len(layout.slices)


def test_a_voxelwise_network_has_its_known_gradient_through_the_windows(x, roi):
    """A 1x1x1 convolution: d (mean of class 1 over the region) / d x is w1 / |region| inside it, 0 outside."""
    net = nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight[:] = torch.tensor([0.5, -2.0]).view(2, 1, 1, 1, 1)
    grad, _, _ = attribute(windowed(net), x, "gradient", target=SegmentationTarget(1, roi))
    expected = roi.float() * (-2.0 / roi.sum())
    assert torch.allclose(grad[0, 0], expected, atol=1e-7)


def test_integrated_gradients_through_the_windows_is_complete(x, roi):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Softplus(), nn.Conv3d(4, 3, 3, padding=1)).eval()
    maps, info, _ = attribute(windowed(net), x, "integrated-gradients", target=SegmentationTarget(2, roi),
                              params={"baseline": "zeros", "steps": 16})
    assert info["completeness_error"] < 1e-3
    delta = region_score(monai_output(net, x), roi) - region_score(monai_output(net, torch.zeros_like(x)), roi)
    assert float(maps.sum()) == pytest.approx(float(delta), rel=1e-3)


def test_occlusion_reruns_only_the_windows_a_box_meets_and_gives_the_full_inference_drops(unet, x, roi):
    model = windowed(unet)
    params = {"window": 8, "stride": 8, "refine": 0, "baseline": "zeros", "score": "probability"}
    ours, info, _ = attribute(model, x, "occlusion", target=SegmentationTarget(2, roi), params=params)
    assert info["incremental"].startswith("sliding windows")
    expected = torch.zeros_like(x)
    with torch.no_grad():
        base = region_score(torch.softmax(monai_output(unet, x), 1), roi)
        for i in range(0, SHAPE[0], 8):
            for j in range(0, SHAPE[1], 8):
                for k in range(0, SHAPE[2], 8):
                    copy = x.clone()
                    copy[..., i:i + 8, j:j + 8, k:k + 8] = 0
                    drop = base - region_score(torch.softmax(monai_output(unet, copy), 1), roi)
                    expected[..., i:i + 8, j:j + 8, k:k + 8] = drop
    assert float((ours - expected).abs().max()) <= 1e-3 * float(expected.abs().max())
    # boxes far from the region change no window on it: exactly no drop there
    assert float(ours[..., 32:, :, 16:].abs().max()) == 0.0


def test_lrp_and_deeplift_run_per_window_and_still_sum_to_the_score(x, roi):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv3d(4, 3, 3, padding=1, bias=False)).eval()
    model = windowed(net)
    target = SegmentationTarget(2, roi)
    relevance, info, _ = attribute(model, x, "lrp", target=target, params={"composite": "epsilon"})
    score = float(region_score(monai_output(net, x), roi).detach())
    assert float(relevance.sum()) == pytest.approx(score, rel=1e-4)
    assert info["completeness_error"] < 1e-4 and info["sliding_window"]["windows_on_target"][0] < 24
    # epsilon-LRP of a bias-free ReLU network is gradient x input: through the windows too
    grad, _, _ = attribute(model, x, "gradient-x-input", target=target)
    assert torch.allclose(relevance, grad, atol=1e-3 * float(grad.abs().max()))  # epsilon: 2e-4 without windows
    lifted, info, _ = attribute(model, x, "deeplift", target=target, params={"baseline": "zeros"})
    assert info["completeness_error"] < 1e-4 and float(lifted.sum()) == pytest.approx(score, rel=1e-4)


def test_one_window_over_the_whole_volume_gives_the_unwindowed_maps(unet, x, roi):
    whole = load_model(unet, device="cpu", inferer={"roi_size": list(SHAPE)})
    plain = load_model(unet, device="cpu")
    for method in ("lrp", "gradcam", "gradient"):
        a, _, _ = attribute(whole, x, method, target=SegmentationTarget(2, roi))
        b, _, _ = attribute(plain, x, method, target=SegmentationTarget(2, roi))
        assert torch.allclose(a, b, atol=1e-6 * float(b.abs().max())), method


def test_seg_grad_cam_through_the_windows_lies_near_the_target(x, roi):
    """A network whose class 2 reads only the first channel of its feature layer: the CAM is that channel's
    activation, summed over the windows on the region, and zero on windows that never meet it."""
    feature = nn.Conv3d(1, 2, 3, padding=1)
    head = nn.Conv3d(2, 3, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[2, 0] = 1.0
    net = nn.Sequential(feature, nn.ReLU(), head).eval()
    cam, info, _ = attribute(windowed(net), x, "gradcam", target=SegmentationTarget(2, roi), layer="1")
    assert info["layer"] == "1"
    assert float(cam[0, 0][roi].mean()) > 0
    assert float(cam[0, 0, 30:, 28:, 20:].abs().max()) == 0.0  # no window there holds the region


def test_probability_maps_through_the_windows(unet, x):
    probability, _, _ = attribute(windowed(unet), x, "probability", target=SegmentationTarget(1, None))
    assert torch.allclose(probability[0, 0], torch.softmax(monai_output(unet, x), 1)[0, 1], atol=1e-6)


def test_a_bundle_inferer_is_read_and_used_end_to_end(tmp_path, unet):
    from xaiexplain.core.explain import explain

    bundle = write_bundle(tmp_path / "seg", unet, "monai.networks.nets.UNet",
                          {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8],
                           "strides": [2], "num_res_units": 1}, name="seg", description="a test", task="segmentation",
                          class_names=["background", "a", "b"], in_channels=1, preprocessing={},
                          inferer={"roi_size": list(ROI), "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2})
    model = load_model(bundle, device="cpu")
    assert model.inferer.roi_size == list(ROI) and model.inferer.mode == "gaussian"
    assert model.inferer.sw_batch_size == 2
    volume = Volume(torch.rand(1, *SHAPE).numpy(), spacing=(1.2, 1.0, 0.8))
    (result,) = explain(model, volume, "gradient", target="b", roi="component:1")
    assert result.map.array.shape == (1, *SHAPE)
    assert result.model["inferer"]["roi_size"] == list(ROI)
    assert result.info["sliding_window"]["windows"] == 48  # 4 x 4 x 3 windows, each 16 voxels, 8 apart
    # the model's own windows can be changed or dropped for one run, without changing the model
    (other,) = explain(model, volume, "probability", target="b", inferer={"overlap": 0.25})
    assert other.info["sliding_window"]["overlap"] == 0.25 and model.inferer.overlap == 0.5
    with pytest.raises(XAIError, match="crops/pads"):
        explain(model, volume, "gradient", target="b", preprocessing={"spatial_size": [32, 32, 32]})


@pytest.mark.parametrize("settings, words", [
    ({"roi_size": [16, 16]}, "three whole numbers"), ({"roi_size": [16, 0, 16]}, "three whole numbers"),
    ({"roi_size": [16] * 3, "overlap": 1.0}, "overlap=1.0"), ({"roi_size": [16] * 3, "mode": "mean"}, "mode"),
    ({"roi_size": [16] * 3, "sw_batch_size": 0}, "sw_batch_size"), ({"overlap": 0.5}, "needs roi_size"),
    ({"roi_size": [16] * 3, "_target_": "SimpleInferer"}, "not a sliding-window inferer"),
    ({"roi_size": [16] * 3, "stride": 4}, "unknown sliding-window settings")])
def test_malformed_window_settings_are_refused_in_one_line(unet, settings, words):
    with pytest.raises(XAIError, match=words) as err:
        load_model(unet, device="cpu", inferer=settings)
    assert "\n" not in str(err.value)


def test_a_classifier_through_windows_is_refused(x):
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten()).eval()
    with pytest.raises(XAIError, match="voxelwise output"):
        windowed(net).output(x)


def test_a_sidecar_inferer_and_the_cli_flags(tmp_path, unet, x):
    from xaiexplain.cli.main import main
    from xaiexplain.core.volume import write_volume

    program = torch.export.export(unet, (x,))
    torch.export.save(program, tmp_path / "seg.pt2")
    (tmp_path / "seg.json").write_text(json.dumps({"task": "segmentation", "inferer": {
        "_target_": "monai.inferers.SlidingWindowInferer", "roi_size": [40, 36, 30]}}))
    assert load_model(tmp_path / "seg.pt2", device="cpu").inferer.roi_size == [40, 36, 30]
    # exported for one size: the windows must have it, whatever the scan's size
    torch.export.save(torch.export.export(unet, (torch.rand(1, 1, *ROI),)), tmp_path / "fixed.pt2")
    fixed = load_model(tmp_path / "fixed.pt2", device="cpu", inferer={"roi_size": list(ROI), "overlap": 0.5,
                                                                       "mode": "gaussian"})
    assert torch.allclose(fixed.output(x), monai_output(unet, x), atol=1e-5)
    from xaiexplain import prepare_case
    prepare_case(fixed, Volume(x[0].numpy()), device="cpu")
    with pytest.raises(XAIError, match="exported for inputs of shape"):
        prepare_case(load_model(tmp_path / "fixed.pt2", device="cpu", inferer={"roi_size": [8, 8, 8]}),
                     Volume(x[0].numpy()), device="cpu")
    write_volume(Volume(x[0].numpy()), tmp_path / "in.nrrd")
    code = main(["explain", "--model", str(tmp_path / "seg.pt2"), "--input", str(tmp_path / "in.nrrd"),
                 "--method", "gradient", "--target", "1", "--window", "40", "36", "30", "--overlap", "0.5",
                 "--blend", "gaussian", "--out", str(tmp_path / "out"), "--quiet", "--no-previews"])
    assert code == 0
    recorded = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert recorded["results"][0]["model"]["inferer"]["mode"] == "gaussian"


def test_occlusion_with_mirrored_padding_scores_whole_copies(x, roi):
    """A volume smaller than a window, padded by reflection: a box at the border is mirrored into the padding, so
    the boxes' shortcut would be wrong there; whole copies are scored, as MONAI's inference gives them."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv3d(3, 3, 3, padding=1)).eval()
    small, region = x[..., :12, :12, :12].contiguous(), roi[:12, :12, :12]
    model = windowed(net, padding_mode="reflect")
    params = {"window": 4, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"}
    ours, _, _ = attribute(model, small, "occlusion", target=SegmentationTarget(2, region), params=params)

    def score(v):
        return region_score(sliding_window_inference(v, ROI, 1, net, overlap=0.5, mode="gaussian",
                                                     padding_mode="reflect"), region)

    with torch.no_grad():
        copy = small.clone()
        copy[..., 8:12, 8:12, 0:4] = 0  # a box on the border, next to the region (boxes alone: twice the drop)
        expected = score(small) - score(copy)
    assert float(expected) != 0 and float(ours[0, 0, 9, 9, 1]) == pytest.approx(float(expected), rel=1e-4)


def test_a_scan_too_big_for_the_free_memory_is_refused_before_any_window_runs(unet, monkeypatch):
    from xaiexplain.core import timing
    from xaiexplain.core.explain import explain

    seen = Seen(unet)
    model = windowed(seen)
    volume = Volume(torch.rand(1, *SHAPE).numpy())
    (result,) = explain(model, volume, "gradient", target=2, roi="component:1")
    assert result.timings["peak_memory_mb"] > 0 and result.timings["peak_memory"].startswith("process peak")
    monkeypatch.setattr(timing, "free_memory", lambda device: 2**20)  # the scan needs about 5 MB
    calls = len(seen.shapes)
    with pytest.raises(XAIError, match="through sliding windows holds the whole scan") as err:
        explain(model, volume, "integrated-gradients", target=2, roi="component:1")
    assert "batch_size=1" in str(err.value)
    # only the prediction ran (twice: a quick first pass is timed again for the estimate), no method's window
    assert len(seen.shapes) - calls == 2 * len(model.windows.layout(torch.zeros(1, 1, *SHAPE)).slices)


def test_each_target_on_one_model_gets_its_own_windows_and_gradient(unet, x, roi):
    """The windows' caches belong to one run: a second region on the same model is not given the first's."""
    model = windowed(unet)
    other = torch.zeros(SHAPE, dtype=torch.bool)
    other[28:36, 2:8, 20:28] = True
    for region in (roi, other, roi):
        ours, _, _ = attribute(model, x, "gradient", target=SegmentationTarget(2, region))
        inputs = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(region_score(monai_output(unet, inputs), region), inputs)
        assert float((ours - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_a_copy_with_another_network_runs_its_own_network_through_the_windows(unet, x):
    import dataclasses

    from xaiexplain.metrics.robustness import fixed_target

    model = windowed(unet)
    torch.manual_seed(9)
    copy = dataclasses.replace(model, network=UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).eval())
    assert copy.windows is not model.windows
    assert not torch.allclose(copy.output(x), model.output(x))  # the randomisation metric's copies differ
    _, reference = fixed_target(model, x, SegmentationTarget(2, None))
    assert torch.equal(reference, model.output(x))  # the metrics' reference is the blended output


@pytest.mark.parametrize("padding", ["replicate", "reflect"])
def test_gradients_through_padding_that_copies_the_volume_are_folded_back(x, roi, padding):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv3d(3, 3, 3, padding=1)).eval()
    small, region = x[..., :20, :18, :10].contiguous(), roi[:20, :18, :10]
    model = load_model(net, device="cpu", inferer={"roi_size": [8, 8, 16], "padding_mode": padding})
    ours, _, _ = attribute(model, small, "gradient", target=SegmentationTarget(2, region))
    inputs = small.clone().requires_grad_(True)
    out = sliding_window_inference(inputs, (8, 8, 16), 1, net, overlap=0.25, padding_mode=padding)
    (expected,) = torch.autograd.grad(region_score(out, region), inputs)
    assert float((ours - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    relevance, info, _ = attribute(model, small, "lrp", target=SegmentationTarget(2, region),
                                   params={"composite": "epsilon"})
    assert relevance.shape == small.shape  # folded onto the volume, the padding's share included


def test_window_settings_given_change_only_themselves_and_an_unusable_bundle_inferer_can_be_dropped(tmp_path, unet):
    model = windowed(unet)
    changed = load_model(model, device="cpu", inferer={"roi_size": [8, 8, 8]})
    assert changed.inferer.roi_size == [8, 8, 8] and changed.inferer.mode == "gaussian"
    assert changed.inferer.overlap == 0.5
    bundle = write_bundle(tmp_path / "seg", unet, "monai.networks.nets.UNet",
                          {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8],
                           "strides": [2], "num_res_units": 1}, name="seg", description="a test", task="segmentation",
                          class_names=["background", "a", "b"], in_channels=1, preprocessing={})
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["inferer"] = {"_target_": "SliceInferer", "roi_size": [16, 16]}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(XAIError, match="SliceInferer is not one XAIExplain can run window by window"):
        load_model(bundle, device="cpu")
    assert load_model(bundle, device="cpu", inferer={}).inferer is None
