"""Incremental inference: boxes pushed through real MONAI networks equal full passes over the changed volumes."""
from __future__ import annotations

import pytest
import torch
from monai.networks import nets
from torch import nn

from xaiexplain import attribute
from xaiexplain.methods.machinery import incremental
from xaiexplain.methods.machinery import scoring as perturb  # the perturbation scorer and its settings
from xaiexplain.methods.machinery.incremental import Base, IncrementalNetwork, Patch
from xaiexplain.methods.machinery.perturbation import paste


def dilated_2d_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 5, 2, 2), nn.LeakyReLU(0.1), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(4, 8, 3, 1, 2, dilation=2, groups=4), nn.AvgPool2d(2, 2, 1), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 3)).eval()


NETWORKS = {
    # name: (network, input size, fewest layers that must run on boxes)
    "DenseNet121 (concatenation, pre-activation BN, max and average pooling)": (
        lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=8,
                                 block_config=(2, 2)), 32, 10),
    "resnet18 (max pooling stem, residual adds, downsampling shortcuts)": (
        lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2), 32, 15),
    "UNet (PReLU, InstanceNorm: global statistics stop the boxes)": (
        lambda: nets.UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=2), 24, 1),
    "SegResNet (GroupNorm first)": (lambda: nets.SegResNet(3, init_filters=8, in_channels=1, out_channels=2), 24, 1),
    "2-D: strides, dilation, groups, padded pooling": (dilated_2d_net, 47, 5),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_boxes_give_the_full_pass_on_monai_networks(name):
    build, n, least_local = NETWORKS[name]
    torch.manual_seed(0)
    net = build().eval()
    dims = 2 if name.startswith("2-D") else 3
    channels = 2 if dims == 2 else 1
    x = torch.randn(1, channels, *(n,) * dims)
    inc = IncrementalNetwork(net, x)
    w = 6
    # corners, faces and the inside: boxes that the layers must clamp at every border
    starts = torch.tensor([[0] * dims, [n - w] * dims, [0, n - w] + [3] * (dims - 2), [n // 2 - 2] * dims])
    values = torch.randn(len(starts), channels, *(w,) * dims)
    with torch.inference_mode():
        expected = net(paste(x, values, starts))
        got = inc(values, starts)
    expected = expected if torch.is_tensor(expected) else expected[0]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5 * (1 + float(expected.abs().max())))
    assert inc.local_layers >= least_local, f"only {inc.local_layers} of {inc.layers} layers ran on boxes"
    assert not torch.equal(got[0], got[1])  # the boxes changed the output: the test could fail


def _boxes_against_full_passes(net, program, n, least_local):
    """IncrementalNetwork on ``program`` (a graph of ATen calls) against full passes of ``net``."""
    x = torch.randn(1, 1, n, n, n)
    inc = IncrementalNetwork(program, x)
    starts = torch.tensor([[0, 0, 0], [n - 6] * 3, [n // 2 - 2] * 3])
    values = torch.randn(len(starts), 1, 6, 6, 6)
    with torch.inference_mode():
        expected = net(paste(x, values, starts))
        got = inc(values, starts)
    assert torch.allclose(got, expected, atol=1e-5 * (1 + float(expected.abs().max())))
    assert inc.local_layers >= least_local, f"only {inc.local_layers} of {inc.layers} layers ran on boxes"
    assert not torch.equal(got[0], got[1])


@pytest.mark.parametrize("name", [name for name in NETWORKS if not name.startswith("2-D")])
def test_boxes_give_the_full_pass_on_torch_export_programs(name):
    """A .pt2 program calls aten.convolution, aten.max_pool3d, aten.add ...: the same boxes as on the module."""
    build, n, least_local = NETWORKS[name]
    torch.manual_seed(0)
    net = build().eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(net, (torch.randn(2, 1, n, n, n),), dynamic_shapes=({0: batch},)).module()
    assert not any(node.op == "call_module" and not node.target.startswith("_guards")
                   for node in program.graph.nodes if node.users)  # no layers left to call: ATen calls only
    _boxes_against_full_passes(net, program, n, least_local)


def test_boxes_give_the_full_pass_on_a_torchscript_network_restated_as_a_program():
    """deepbet's path: TorchScript converted to a program, whose layer markers must pass the boxes on."""
    from xaiexplain.core.conversion import program_from_torchscript
    build, n, least_local = NETWORKS["resnet18 (max pooling stem, residual adds, downsampling shortcuts)"]
    torch.manual_seed(0)
    net = build().eval()
    program = program_from_torchscript(torch.jit.trace(net, torch.randn(1, 1, n, n, n)), torch.randn(2, 1, n, n, n))
    _boxes_against_full_passes(net, program, n, least_local)


def test_a_patch_reads_any_box_with_padding_and_its_own_values():
    torch.manual_seed(1)
    base = torch.randn(1, 3, 7, 6, 5)
    values = torch.randn(2, 3, 2, 3, 2)
    own = torch.tensor([[0, 0, 0], [5, 2, 3]])
    patch = Patch(values, own, Base(base))
    full = paste(base, values, own)
    padded = torch.nn.functional.pad(full, (1, 1) * 3, value=-7.0)
    starts = torch.tensor([[-1, -1, -1], [4, 1, 2]])  # both reach outside the grid
    got = patch.read(starts, (4, 5, 4), fill=-7.0)
    for b, begin in enumerate(starts.tolist()):
        box = [slice(s + 1, s + 1 + k) for s, k in zip(begin, (4, 5, 4))]
        assert torch.equal(got[b], padded[(b, slice(None), *box)])
    assert torch.equal(patch.dense(), full)


def test_a_wrong_local_rule_is_caught_and_the_map_stays_right(monkeypatch, boxes_wherever_they_match):
    """If a layer were wrongly taken for voxel-wise, the check against full passes falls back to them."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Softmax(dim=2), nn.Conv3d(4, 4, 3, padding=1),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    params = {"window": 6, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"}
    right, info, _ = attribute(net, x, "occlusion", target=1, params=params)
    assert info["incremental"].startswith("yes")
    monkeypatch.setattr(incremental, "POINTWISE_MODULES", incremental.POINTWISE_MODULES + (nn.Softmax,))
    wrong_rule, info, _ = attribute(net, x, "occlusion", target=1, params=params)
    assert info["incremental"] == "no (its output differed from the full pass)"
    assert torch.allclose(wrong_rule, right, atol=1e-6)


@pytest.mark.parametrize("method,params", [
    ("occlusion", {"window": 16, "stride": 8, "refine": 2, "baseline": "blur"}),
    ("occlusion-regions", {"baseline": "blur", "keep_only": True}),
])
def test_occlusion_maps_are_the_same_scored_incrementally_or_in_full(demo, demo_x, positive_case, method, params,
                                                                      monkeypatch, boxes_wherever_they_match):
    from xaiexplain import Preprocessor
    labels = torch.round(Preprocessor(demo.preprocessing).forward_mask(positive_case.labels)[0]).long()
    regions = labels if method == "occlusion-regions" else None
    before = demo_x.clone()
    fast, info, ctx = attribute(demo, demo_x, method, target=1, regions=regions, params=params)
    assert info["incremental"].startswith("yes") and demo_x.equal(before)
    monkeypatch.setattr(perturb, "INCREMENTAL_DEVICES", ())
    full, info_full, ctx_full = attribute(demo, demo_x, method, target=1, regions=regions, params=params)
    assert info_full["incremental"] == "no (full volumes: the default on cpu)"
    assert ctx.passes == ctx_full.passes
    assert float(fast.abs().max()) > 0.01
    assert torch.allclose(fast, full, atol=1e-5)


def test_torchscript_and_volume_wide_first_layers_are_scored_in_full(x=torch.rand(1, 1, 12, 12, 12)):
    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(1, 1, 12, 12, 12))

        def forward(self, x):
            s = (x * self.w).flatten(1).sum(1)
            return torch.stack([-s, s], 1)

    params = {"window": 4, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"}
    _, info, _ = attribute(Linear(), x, "occlusion", target=1, params=params)
    assert info["incremental"] == "no (the first layer already mixes the whole volume)"
    scripted = torch.jit.script(nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveMaxPool3d(1), nn.Flatten()))
    _, info, _ = attribute(scripted, x, "occlusion", target=1, params=params)
    assert info["incremental"] == "no (TorchScript: its graph cannot be traced)"


def test_without_memory_for_the_kept_outputs_it_scores_full_volumes(monkeypatch, boxes_wherever_they_match,
                                                                   x=torch.rand(1, 1, 12, 12, 12)):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(),
                        nn.Linear(3, 2)).eval()
    params = {"window": 4, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"}
    roomy, info, _ = attribute(net, x, "occlusion", target=1, params=params)
    assert info["incremental"].startswith("yes")
    monkeypatch.setattr(perturb, "INCREMENTAL_MEMORY", 10**12)
    tight, info, _ = attribute(net, x, "occlusion", target=1, params=params)
    assert info["incremental"] == "no (not enough free memory to keep every layer's unperturbed output)"
    assert torch.allclose(roomy, tight, atol=1e-6)


def test_boxes_slower_than_full_passes_on_the_first_batch_are_not_used(demo, demo_x, monkeypatch):
    """The path is chosen from the first batch, timed both ways (here the clock says the boxes lost)."""
    params = {"window": 16, "stride": 8, "refine": 0, "baseline": "blur", "score": "logit"}
    boxed, info, _ = attribute(demo, demo_x, "occlusion", target=1, params=params)
    assert info["incremental"].startswith("yes: 22 of 25 layers run on boxes")
    tries = len(perturb.thread_counts(torch.get_num_threads()))
    clock = iter([1.0] * tries + [2.0] * tries)  # the full passes, then the boxes: 2x slower, at each thread count
    monkeypatch.setattr(perturb, "timed", lambda run: (next(clock), run()))
    full, info, _ = attribute(demo, demo_x, "occlusion", target=1, params=params)
    assert info["incremental"].startswith("no (boxes took 2.00x the full passes on the first batch: 22 of 25 layers")
    # the same drops to float32 rounding of the logits they are differences of (seen: 7e-6 on drops up to 4e-3)
    assert float((boxed - full).abs().max()) <= 1e-2 * float(full.abs().max())


def test_the_thread_count_that_scored_the_first_batch_faster_is_kept_for_the_rest(demo, demo_x, monkeypatch):
    """On a busy CPU one thread beat two by 3x for boxes (measured beside another job); the clock decides here."""
    params = {"window": 16, "stride": 8, "refine": 0, "baseline": "blur", "score": "logit"}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        default, info, _ = attribute(demo, demo_x, "occlusion", target=1, params=params)
        assert info["threads"] in ("1 of 2 (the faster on the first batch)", "2 of 2 (the faster on the first batch)")
        seen = []

        def clock(run):  # one thread looks twice as fast; record the threads every later batch runs with
            seen.append(torch.get_num_threads())
            return (1.0 if torch.get_num_threads() == 1 else 2.0), run()
        monkeypatch.setattr(perturb, "timed", clock)
        monkeypatch.setattr(perturb.Scorer, "_scores", lambda self, out, real=perturb.Scorer._scores: (
            seen.append(("batch", torch.get_num_threads())), real(self, out))[1])
        one, info, _ = attribute(demo, demo_x, "occlusion", target=1, params=params)
        assert info["threads"] == "1 of 2 (the faster on the first batch)"
        assert seen[:4] == [2, 1, 2, 1]  # full passes at 2 and 1 threads, then boxes at 2 and 1
        assert all(threads == 1 for kind, threads in seen[5:])  # every batch after the first
        assert torch.get_num_threads() == 2  # restored
        assert float((one - default).abs().max()) <= 1e-2 * float(default.abs().max())  # float32 logits' rounding
    finally:
        torch.set_num_threads(before)


def test_approximate_boxes_keep_instance_norms_at_the_unperturbed_statistics(boxes_wherever_they_match):
    """Exact boxes stop at the first InstanceNorm (its statistics read the whole volume); approximate ones keep
    the unperturbed statistics, measured against full passes on the first batch."""
    import numpy as np

    from xaiexplain.core.targets import SegmentationTarget
    build, n, _ = NETWORKS["UNet (PReLU, InstanceNorm: global statistics stop the boxes)"]
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(1, 1, n, n, n)
    region = torch.zeros(n, n, n)
    region[4:12, 4:12, 4:12] = 1
    params = {"window": 8, "stride": 8, "refine": 0, "baseline": "zeros", "score": "logit"}
    target = SegmentationTarget(1, region)
    exact, info, _ = attribute(net, x, "occlusion", target=target, params=params)
    approx, ainfo, _ = attribute(net, x, "occlusion", target=target, params={**params, "approximate": True})
    assert "frozen_norms" not in info and ainfo["frozen_norms"].startswith("9 normalisations kept")
    exact_layers = int(info["incremental"].split("yes: ")[1].split(" of")[0])
    approx_layers = int(ainfo["incremental"].split("yes: ")[1].split(" of")[0])
    assert approx_layers > exact_layers  # the boxes got past the norms
    error = float(ainfo["frozen_norms"].split("target error ")[1].split(" ")[0])
    assert error <= 0.2
    assert float(np.corrcoef(exact.flatten().numpy(), approx.flatten().numpy())[0, 1]) >= 0.95
    assert not torch.equal(exact, approx)  # an approximation: the test could fail
