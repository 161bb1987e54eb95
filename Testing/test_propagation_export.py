"""LRP, DeepLIFT and DeepSHAP on torch.export programs (.pt2): the same maps as on the nn.Module they came from."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import pearson
from monai.networks import nets

from xaiexplain import XAIError, attribute, explain, load_model
from xaiexplain.core.targets import SegmentationTarget
from xaiexplain.core.volume import Volume

NETWORKS = {
    "unet": lambda: nets.UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=2, norm="instance"),
    "segresnet": lambda: nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8),
    "dynunet": lambda: nets.DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2]),
    "densenet121": lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2),
}
SEGMENTATION = {"unet", "segresnet", "dynunet"}


def _pair(net: nn.Module, x: torch.Tensor, folder, dynamic_batch: bool = False):
    """The module and its program saved to and read back from a .pt2 file."""
    dims = ({0: torch.export.Dim("batch", min=1, max=16)},) if dynamic_batch else None
    sample = torch.cat([x, x]) if dynamic_batch else x  # a batch of 1 would fix the size at 1
    program = torch.export.export(net.eval(), (sample,), dynamic_shapes=dims)
    torch.export.save(program, folder / "net.pt2")
    return load_model(net, device="cpu"), load_model(folder / "net.pt2", device="cpu")


def _case(name, size=24):
    torch.manual_seed(0)
    x = torch.rand(1, 1, size, size, size)
    if name not in SEGMENTATION:
        return NETWORKS[name](), x, 1
    region = torch.zeros(size, size, size)
    region[6:16, 6:16, 6:16] = 1
    return NETWORKS[name](), x, SegmentationTarget(1, region)


def _same(module, program, x, method, target, params=None, **kw):
    a, info_a, _ = attribute(module, x, method, target=target, params=params, **kw)
    b, info_b, _ = attribute(program, x, method, target=target, params=params, **kw)
    assert pearson(a, b) >= 0.999
    assert info_b["completeness_error"] == pytest.approx(info_a["completeness_error"], abs=1e-4)
    return info_a, info_b


def test_lrp_on_the_demo_program_equals_lrp_on_its_module(demo, demo_x, tmp_path):
    module, program = _pair(demo.network, demo_x, tmp_path)
    info_a, info_b = _same(module, program, demo_x, "lrp", 1)
    assert info_b["rules_applied"] == info_a["rules_applied"]  # every layer met the same rule
    assert info_a["rules_applied"]["batchnorm-merged"] == 8


@pytest.mark.parametrize("name", ["unet", "segresnet", "dynunet"])
def test_lrp_on_a_program_equals_lrp_on_its_module(name, tmp_path):
    net, x, target = _case(name)
    module, program = _pair(net, x, tmp_path)
    info_a, info_b = _same(module, program, x, "lrp", target)
    assert info_b["rules_applied"] == info_a["rules_applied"]


@pytest.mark.slow
def test_lrp_on_a_densenet121_program_equals_lrp_on_its_module(tmp_path):
    net, x, target = _case("densenet121", 32)
    module, program = _pair(net, x, tmp_path)
    info_a, info_b = _same(module, program, x, "lrp", target)
    assert info_b["rules_applied"] == info_a["rules_applied"]


@pytest.mark.parametrize("name", ["unet", "dynunet"])
def test_deeplift_and_deepshap_on_a_program_equal_the_module(name, tmp_path):
    net, x, target = _case(name)
    module, program = _pair(net, x, tmp_path, dynamic_batch=True)
    info_a, _ = _same(module, program, x, "deeplift", target, params={"baseline": "blur"})
    assert info_a["completeness_error"] < 1e-3  # summation to delta
    references = torch.rand(3, 1, 24, 24, 24)
    a, _, _ = attribute(module, x, "deepshap", target=target, references=references, params={"batch_size": 2})
    b, _, _ = attribute(program, x, "deepshap", target=target, references=references, params={"batch_size": 2})
    assert pearson(a, b) >= 0.999


class _SoftmaxSegmenter(nn.Module):
    """A segmenter that ends in a softmax, as deepbet and many deployed networks do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.InstanceNorm3d(8), nn.ReLU(),
                                  nn.Conv3d(8, 2, 1))

    def forward(self, x):
        return torch.softmax(self.body(x), 1)


def test_a_final_softmax_passes_relevance_and_keeps_summation_to_delta(tmp_path):
    torch.manual_seed(0)
    net, x = _SoftmaxSegmenter().eval(), torch.rand(1, 1, 16, 16, 16)
    target = SegmentationTarget(1, torch.ones(16, 16, 16))
    module, program = _pair(net, x, tmp_path)
    info_a, _ = _same(module, program, x, "lrp", target)
    assert info_a["rules_applied"]["pass-activation"] == 2  # the ReLU and the softmax
    info_a, _ = _same(module, program, x, "deeplift", target, params={"baseline": "blur"})
    assert info_a["completeness_error"] < 1e-3


def test_an_input_equal_to_the_reference_at_some_voxels_keeps_summation_to_delta():
    # where the logits of input and reference agree, the softmax's slope is its diagonal, not the zero
    # that a product with a ones vector gives
    torch.manual_seed(1)
    net, x = _SoftmaxSegmenter().eval(), torch.rand(1, 1, 16, 16, 16)
    baseline = x.clone()
    baseline[..., :8] = 0
    _, info, _ = attribute(net, x, "deeplift", target=SegmentationTarget(1, torch.ones(16, 16, 16)),
                           params={"baseline": baseline})
    assert info["completeness_error"] < 1e-3


def test_a_decomposed_program_is_refused_in_one_line_naming_the_call(demo, demo_x, tmp_path):
    program = torch.export.export(demo.network.eval(), (demo_x,)).run_decompositions()
    torch.export.save(program, tmp_path / "decomposed.pt2")
    model = load_model(tmp_path / "decomposed.pt2", device="cpu")
    for method in ("lrp", "deeplift"):
        with pytest.raises(XAIError, match=r"no rule for 'aten::where.*layer 'features.0.adn.A'.*run_decompositions"
                           ) as err:
            attribute(model, demo_x, method, target=1)
        assert "\n" not in str(err.value) and "While executing" not in str(err.value)


def test_a_program_fixed_to_one_volume_runs_batched_methods_one_volume_at_a_time(tmp_path):
    net, x, target = _case("unet")
    module, program = _pair(net, x, tmp_path)
    assert any("batch of 1" in note for note in program.notes)
    params = {"steps": 8, "batch_size": 4, "baseline": "blur"}
    a, _, _ = attribute(module, x, "integrated-gradients", target=target, params=params)
    b, _, ctx = attribute(program, x, "integrated-gradients", target=target, params=params)
    assert pearson(a, b) >= 0.9999 and ctx.passes["backward"] == 8


def test_a_program_of_a_fixed_size_refuses_another_size_before_any_pass_and_says_how_to_fit_it(tmp_path):
    net, x, _ = _case("unet")
    _, program = _pair(net, x, tmp_path)
    volume = Volume(torch.rand(1, 30, 24, 24).numpy(), spacing=(1.0, 1.0, 1.0))
    calls = []
    program.network.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(XAIError, match=r"exported for inputs of shape \(N, 1, 24, 24, 24\).*\(1, 1, 30, 24, 24\)"
                       r".*channel-first.*--size 24 24 24") as err:
        explain(program, volume, ["gradient"], target=1)
    assert "\n" not in str(err.value) and not calls
    explain(program, volume, ["gradient"], target=1, preprocessing={"spatial_size": [24, 24, 24]})


def test_passed_norms_keep_relevance_where_it_is_and_conserve_it():
    # an instance norm's centring spreads relevance over the whole volume; passed on, a voxel keeps its own
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.InstanceNorm3d(4), nn.ReLU(),
                        nn.Conv3d(4, 2, 1, bias=False)).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    x[..., :8] = 0  # "air": half the volume holds nothing
    region = torch.zeros(16, 16, 16, dtype=torch.bool)
    region[4:12, 4:12, 10:14] = True
    target = SegmentationTarget(1, region)
    passed, info, _ = attribute(net, x, "lrp", target=target)
    spread, info_spread, _ = attribute(net, x, "lrp", target=target, params={"norm_rule": "epsilon"})
    assert info["norm_rule"] == "pass" and info["rules_applied"]["pass-norm"] == 1
    # passing loses nothing: what the z+ layers absorb (outputs without positive inputs) is the same either way
    assert info["relevance_sum"][0] == pytest.approx(info_spread["relevance_sum"][0], rel=1e-3)
    near = torch.zeros_like(region)
    near[3:13, 3:13, 9:15] = True  # the region grown by the 3x3x3 kernel's reach
    assert float(passed[0, 0][near].abs().sum() / passed.abs().sum()) > 0.999
    assert float(spread[0, 0][near].abs().sum() / spread.abs().sum()) < 0.9
