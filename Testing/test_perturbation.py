"""Perturbation methods against exact answers (linear models, brute-force Shapley values) and against Captum."""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import pearson
from xaiexplain import XAIError, attribute, get_method
from xaiexplain.methods import Cancelled
from xaiexplain.methods.machinery.inference import InferenceNetwork
from xaiexplain.methods.occlusion import windows
from xaiexplain.core.result import peak_voxel

SHAPE = (24, 24, 24)


class LinearScore(nn.Module):
    """Class-1 logit = sum(w * x), class-0 logit = its negative: every region's contribution is exact."""

    def __init__(self, seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn((1, 1) + SHAPE, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([-s, s], 1)


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


@pytest.fixture(scope="module")
def x():
    gen = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.avg_pool3d(torch.rand((1, 1) + SHAPE, generator=gen), 3, 1, 1)
    return smooth + 0.1 * torch.rand((1, 1) + SHAPE, generator=gen)


@pytest.fixture(scope="module")
def labels():
    lab = torch.zeros(SHAPE, dtype=torch.long)
    lab[2:10, 2:12, 3:20] = 4
    lab[12:22, 2:12, 3:20] = 9
    lab[2:12, 13:22, 3:12] = 11
    lab[13:22, 13:22, 3:12] = 2
    lab[5:20, 5:20, 20:23] = 30
    return lab


def region_sums(model: LinearScore, x, labels) -> dict[int, float]:
    contribution = (model.w * x).detach()[0, 0]
    return {int(k): float(contribution[labels == k].sum()) for k in labels.unique() if k != 0}


def test_region_methods_are_exact_on_a_linear_model(x, labels):
    model = LinearScore()
    truth = region_sums(model, x, labels)
    ids = sorted(truth)
    common = {"baseline": "zeros", "score": "logit"}
    _, occ, _ = attribute(model, x, "occlusion-regions", target=1, regions=labels, params=common)
    _, lime, _ = attribute(model, x, "lime", target=1, regions=labels,
                           params={**common, "samples": 200, "alpha": 1e-9})
    _, exact, _ = attribute(model, x, "kernel-shap", target=1, regions=labels, params={**common, "samples": 64})
    _, sampled, _ = attribute(model, x, "kernel-shap", target=1, regions=labels, params={**common, "samples": 20})
    for info in (occ, lime, exact, sampled):
        assert np.allclose([info["region_scores"][0][k] for k in ids], [truth[k] for k in ids], rtol=1e-4, atol=1e-3)
    assert lime["surrogate_r2"] > 0.999999
    assert exact["exact"] and not sampled["exact"]
    assert exact["completeness_error"] < 0.02 and sampled["completeness_error"] < 0.02


def test_kernel_shap_gives_the_exact_shapley_values_of_a_nonlinear_network(x, labels):
    net = small_cnn()
    ids = [int(k) for k in labels.unique() if k != 0]
    base = torch.zeros_like(x)

    @functools.lru_cache(maxsize=None)
    def value(coalition: frozenset) -> float:  # the target logit with only the regions in ``coalition`` kept
        keep = torch.zeros(SHAPE, dtype=torch.bool)
        for k in coalition:
            keep |= labels == k
        keep |= labels == 0
        with torch.no_grad():
            return float(net(torch.where(keep, x, base))[0, 1])

    n = len(ids)
    shapley = []
    for k in ids:
        others = [j for j in ids if j != k]
        total = 0.0
        for size in range(n):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                total += weight * (value(frozenset(subset + (k,))) - value(frozenset(subset)))
        shapley.append(total)
    _, info, _ = attribute(net, x, "kernel-shap", target=1, regions=labels,
                           params={"baseline": "zeros", "score": "logit", "samples": 100})
    assert info["exact"]
    assert np.allclose([info["region_scores"][0][k] for k in ids], shapley, atol=1e-4)
    assert abs(sum(shapley) - info["efficiency"][0]["sum_of_values"]) < 1e-4


def test_patch_occlusion_is_exact_on_a_linear_model(x):
    model = LinearScore()
    maps, info, ctx = attribute(model, x, "occlusion", target=1,
                                params={"window": 8, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"})
    contribution = (model.w * x)[0, 0].double()
    total = torch.zeros(SHAPE, dtype=torch.float64)
    count = torch.zeros(SHAPE, dtype=torch.float64)
    for w in windows(SHAPE, 8, 4):
        total[w] += contribution[w].sum()
        count[w] += 1
    assert torch.allclose(maps[0, 0].double(), total / count, rtol=1e-4, atol=1e-3)
    assert info["windows"] == 125 and ctx.passes["forward"] == 125 + 1  # one probe pass
    assert get_method("occlusion").estimate(get_method("occlusion").params({"window": 8, "stride": 4, "refine": 0}),
                                            SHAPE)["forward"] == ctx.passes["forward"]


def test_refinement_adds_exact_finer_levels_inside_the_best_window(x):
    model = LinearScore()
    contribution = (model.w * x)[0, 0].double()
    params = {"window": 8, "stride": 4, "baseline": "zeros", "score": "logit"}
    coarse, _, _ = attribute(model, x, "occlusion", target=1, params={**params, "refine": 0})
    fine, info, ctx = attribute(model, x, "occlusion", target=1, params={**params, "refine": 2})
    # level by level: brute-force the best window of the level before, then the level's exact mean-drop map
    expected = coarse[0, 0].double().clone()
    best = max(windows(SHAPE, 8, 4), key=lambda w: float(contribution[w].sum()))
    for level, (size, step) in zip(info["refined"], ((4, 2), (2, 1))):
        total = torch.zeros(SHAPE, dtype=torch.float64)
        count = torch.zeros(SHAPE, dtype=torch.float64)
        inner = [tuple(slice(b.start + w.start, b.start + w.stop) for b, w in zip(best, spot))
                 for spot in windows(tuple(b.stop - b.start for b in best), size, step)]
        for w in inner:
            total[w] += contribution[w].sum()
            count[w] += 1
        expected += total / count.clamp(min=1)
        best = max(inner, key=lambda w: float(contribution[w].sum()))
        assert level["window"] == [size] * 3 and level["best"] == [[w.start, w.stop] for w in best]
    assert torch.allclose(fine[0, 0].double(), expected, rtol=1e-4, atol=1e-3)
    assert ctx.passes["forward"] == 125 + 27 + 27 + 1
    assert get_method("occlusion").estimate(get_method("occlusion").params(params), SHAPE)["forward"] == 180


def test_refinement_puts_the_peak_on_a_small_spot_the_grid_misses():
    class SpotReader(nn.Module):  # class 1 = summed intensity of a 3-voxel cube
        def forward(self, v):
            s = v[:, :, 9:12, 15:18, 4:7].sum((1, 2, 3, 4))
            return torch.stack([-s, s], 1)

    v = torch.rand((1, 1) + SHAPE, generator=torch.Generator().manual_seed(1)) + 0.5
    params = {"window": 12, "stride": 6, "baseline": "zeros", "score": "logit"}
    inside = lambda m: 9 <= m[0] < 12 and 15 <= m[1] < 18 and 4 <= m[2] < 7  # noqa: E731
    peaks = {}
    for refine in (0, 2):
        maps, _, _ = attribute(SpotReader(), v, "occlusion", target=1, params={**params, "refine": refine})
        peaks[refine] = peak_voxel(maps[0, 0].numpy())
    assert not inside(peaks[0]) and inside(peaks[2]), peaks


def test_patch_occlusion_equals_captum_occlusion(x):
    captum = pytest.importorskip("captum.attr")
    net = small_cnn()
    ours, _, _ = attribute(net, x, "occlusion", target=1,
                           params={"window": 8, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"})
    theirs = captum.Occlusion(net).attribute(x, sliding_window_shapes=(1, 8, 8, 8), strides=(1, 4, 4, 4),
                                             baselines=0.0, target=1, perturbations_per_eval=16)
    assert pearson(ours, theirs) > 0.9999
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_patch_occlusion_equals_monai_occlusion_sensitivity(x):
    from monai.visualize import OcclusionSensitivity

    net = small_cnn()
    ours, _, _ = attribute(net, x, "occlusion", target=1,
                           params={"window": 8, "stride": 4, "refine": 0, "baseline": "zeros", "score": "logit"})
    occluded = OcclusionSensitivity(net, mask_size=8, n_batch=16, verbose=False, mode=0.0, overlap=0.5,
                                    activate=False)(x)[0][:, 1:2]  # the occluded logit, averaged over windows
    with torch.no_grad():
        unoccluded = net(x)[0, 1]
    assert torch.allclose(ours, unoccluded - occluded.as_tensor(), atol=1e-4)


def test_region_occlusion_equals_captum_feature_ablation(x, labels):
    captum = pytest.importorskip("captum.attr")
    net = small_cnn()
    ours, info, _ = attribute(net, x, "occlusion-regions", target=1, regions=labels,
                              params={"baseline": "zeros", "score": "logit"})
    theirs = captum.FeatureAblation(net).attribute(x, baselines=0.0, target=1, feature_mask=labels[None, None],
                                                   perturbations_per_eval=8)
    inside = labels[None, None] > 0  # Captum also ablates the background (label 0), which is not a region
    assert torch.allclose(ours[inside], theirs[inside], atol=1e-5)
    assert (ours[~inside] == 0).all()


def test_probability_and_logit_drops_and_kept_alone_gains_are_recorded(x, labels):
    net = small_cnn()
    _, info, _ = attribute(net, x, "occlusion-regions", target=1, regions=labels,
                           params={"keep_only": True, "baseline": "zeros"})
    columns = info["region_columns"][0]
    assert set(columns) == {"probability_drop", "logit_drop", "kept_alone_probability_gain", "kept_alone_logit_gain"}
    assert info["region_scores"][0] == columns["probability_drop"]  # the default score

    def outputs(keep):
        with torch.no_grad():
            out = net(torch.where(keep, x, torch.zeros_like(x)))
        return float(torch.softmax(out, 1)[0, 1]), float(out[0, 1])

    p, logit = outputs(torch.ones(SHAPE, dtype=torch.bool))
    p_none, logit_none = outputs(labels == 0)
    assert info["unperturbed"]["probability"] == pytest.approx(p, rel=1e-5)
    for k in (4, 30):
        p_k, logit_k = outputs(labels != k)
        assert columns["probability_drop"][k] == pytest.approx(p - p_k, abs=1e-5)
        assert columns["logit_drop"][k] == pytest.approx(logit - logit_k, abs=1e-4)
        p_alone, logit_alone = outputs((labels == k) | (labels == 0))
        assert columns["kept_alone_probability_gain"][k] == pytest.approx(p_alone - p_none, abs=1e-5)
        assert columns["kept_alone_logit_gain"][k] == pytest.approx(logit_alone - logit_none, abs=1e-4)


def test_rise_finds_the_region_a_model_reads(x):
    class BoxReader(nn.Module):  # class 1 = mean intensity of one box
        def forward(self, v):
            s = v[:, :, 14:20, 4:10, 8:14].mean((1, 2, 3, 4))
            return torch.stack([-s, s], 1)

    maps, info, _ = attribute(BoxReader(), x, "rise", target=1,
                                params={"masks": 400, "cells": 6, "score": "logit", "baseline": "zeros"})
    peak = np.unravel_index(int(maps[0, 0].argmax()), SHAPE)
    assert 12 <= peak[0] < 22 and 2 <= peak[1] < 12 and 6 <= peak[2] < 16
    inside = maps[0, 0, 14:20, 4:10, 8:14].mean()
    assert inside > torch.quantile(maps[0, 0].flatten(), 0.95)


def test_lime_and_rise_are_repeatable_bit_for_bit_and_follow_the_seed(x, labels):
    net = small_cnn()
    runs = {}
    for method, params in (("lime", {"samples": 60}), ("rise", {"masks": 40})):
        a = attribute(net, x, method, target=1, regions=labels, params=params, seed=3)[0]
        b = attribute(net, x, method, target=1, regions=labels, params=params, seed=3)[0]
        c = attribute(net, x, method, target=1, regions=labels, params=params, seed=4)[0]
        assert torch.equal(a, b), method
        assert not torch.equal(a, c), method
        runs[method] = a
    assert runs["lime"].abs().sum() > 0


def test_batch_size_does_not_change_the_map_and_the_input_is_untouched(x, labels):
    net = small_cnn()
    before = x.clone()
    one, info1, _ = attribute(net, x, "occlusion-regions", target=1, regions=labels, params={"batch_size": 1})
    auto, info2, _ = attribute(net, x, "occlusion-regions", target=1, regions=labels)
    assert info1["batch_size"] == 1 and info2["batch_size_chosen"] == "auto" and info2["batch_size"] >= 2
    assert info2["footprint_mb_per_volume"] > 0
    assert torch.allclose(one, auto, atol=1e-6)
    # RISE draws every mask before batching: GPU runs (larger batches) use the CPU's masks
    rise = [attribute(net, x, "rise", target=1, params={"masks": 24, "batch_size": b}, seed=5)[0] for b in (5, 24)]
    assert torch.allclose(rise[0], rise[1], atol=1e-6)
    patch = [attribute(net, x, "occlusion", target=1, params={"window": 8, "stride": 6, "batch_size": b})[0]
             for b in (1, 7)]
    assert torch.allclose(patch[0], patch[1], atol=1e-6)
    assert torch.equal(x, before)


def test_cancel_stops_between_batches(x):
    net = small_cnn()
    seen = []
    with pytest.raises(Cancelled):
        attribute(net, x, "occlusion", target=1, params={"window": 4, "stride": 2, "batch_size": 4},
                  progress=lambda f, m: seen.append(f), cancel=lambda: len(seen) >= 3)
    assert 0 < max(seen) < 0.1


def test_region_methods_without_regions_and_bad_parameters_say_what_to_do(x):
    net = small_cnn()
    with pytest.raises(XAIError, match="needs regions.*--atlas harvard-oxford"):
        attribute(net, x, "occlusion-regions", target=1)
    with pytest.raises(XAIError, match="occlusion.score='odds' is not a choice.*probability, logit"):
        attribute(net, x, "occlusion", target=1, params={"score": "odds"})
    with pytest.raises(XAIError, match="unknown baseline"):
        attribute(net, x, "rise", target=1, params={"baseline": "noise", "masks": 4})


def test_explain_maps_regions_into_model_space_and_paints_scores_on_an_oblique_input_grid():
    from xaiexplain import Volume, explain
    from xaiexplain.regions import Regions

    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rng = np.random.default_rng(0)
    volume = Volume(rng.random((1, 30, 26, 20), dtype=np.float32), (2.0, 2.5, 3.0), (5.0, -3.0, 8.0), direction)
    labels = np.zeros(volume.shape, np.int32)
    labels[2:14, 2:24, 2:18], labels[15:28, 2:12, 2:18], labels[15:28, 13:24, 2:18] = 5, 6, 8
    regions = Regions(volume.with_array(labels[None]), {5: "five", 6: "six", 8: "eight"}, "test")
    net = small_cnn()
    results = explain(net, volume, ["occlusion-regions", "gradient"], target=1, regions=regions,
                      preprocessing={"spacing": [3.0, 3.0, 3.0], "spatial_size": [24, 24, 24]})
    occlusion, gradient = results
    assert occlusion.map.same_grid(volume) and gradient.map.same_grid(volume)
    for row in occlusion.regions:  # each region painted with its own score, exactly, on the input grid
        inside = occlusion.array[labels == row["id"]]
        assert np.all(inside == np.float32(row["score"]))
    assert np.all(occlusion.array[labels == 0] == 0)
    assert {r["name"] for r in gradient.regions} == {"five", "six", "eight"}
    for row in gradient.regions:
        assert row["sum"] == pytest.approx(float(gradient.array[labels == row["id"]].sum(dtype=np.float64)), rel=1e-5)
    assert occlusion.info["regions"]["source"] == "test" and occlusion.to_dict()["regions"][0]["rank"] == 1


# --- the faster copy of the network that scores perturbed batches

class DataDependent(nn.Module):
    """Python control flow on the input's values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = y if float(y.mean()) > -1e9 else -y
        return y.amax((2, 3, 4))


def test_fast_copy_folds_batch_norms_and_equals_the_network(demo, demo_x):
    before = {k: v.clone() for k, v in demo.network.state_dict().items()}
    fast = InferenceNetwork(demo.network, has_layers=True)
    assert fast.fast is not None and "folded" in fast.how
    kinds = lambda m: {type(k).__name__ for k in m.modules()}  # noqa: E731
    assert "BatchNorm3d" in kinds(demo.network) and "BatchNorm3d" not in kinds(fast.fast)
    batch = torch.cat([demo_x, demo_x.flip(2), torch.zeros_like(demo_x)])
    with torch.inference_mode():
        expected, got = demo.network(batch), fast(batch)
    assert got.is_contiguous() and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    fast.verify(got[:1], expected[:1])
    assert fast.fast is not None and fast.verified
    # the model the user gave is untouched: same weights, same layers, default memory layout
    after = demo.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in demo.network.parameters())


def test_fast_copy_falls_back_when_untraceable_or_different():
    torch.manual_seed(0)
    network = DataDependent().eval()
    fast = InferenceNetwork(network, has_layers=True)
    assert fast.fast is None and "could not be traced" in fast.how
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.inference_mode():
        assert torch.equal(fast(x), network(x))
    # a copy whose output differs from the network's is dropped on its first check
    folded = InferenceNetwork(small_cnn(), has_layers=True)
    with torch.inference_mode():
        out = folded(x)
    folded.verify(out + 1.0, out)
    assert folded.fast is None and "differed" in folded.how
    # and the perturbation methods record which network scored their batches
    _, info, _ = attribute(network, x[:1], "occlusion", target=0,
                           params={"window": 4, "stride": 4, "baseline": "zeros"})
    assert "could not be traced" in info["network"]


def test_changed_windows_equal_a_window_by_window_comparison():
    from xaiexplain.methods.occlusion import changed_windows, window_bounds
    x = torch.randn(1, 2, 20, 17, 13, generator=torch.Generator().manual_seed(0))
    base = x.clone()
    base[0, 1, 3, 4, 5] += 1  # one changed voxel inside, one in the far corner
    base[0, 0, 19, 16, 12] -= 1
    spots = windows(x.shape[2:], 6, 4)
    brute = [i for i, w in enumerate(spots) if not torch.equal(x[(0, slice(None)) + w], base[(0, slice(None)) + w])]
    assert changed_windows(x, base, window_bounds(spots, x.device)) == brute and 0 < len(brute) < len(spots)


def test_approximate_occlusion_stays_within_its_tolerance_and_finds_the_same_peak(demo, demo_x):
    """Coarse lattice, interpolation, drill-down where the map is high: against the exact map on the demo."""
    params = {"window": 16, "stride": 8, "refine": 0, "baseline": "blur", "score": "logit"}
    exact, _, ctx = attribute(demo, demo_x, "occlusion", target=1, params=params)
    approx, info, actx = attribute(demo, demo_x, "occlusion", target=1, params={**params, "approximate": True})
    facts = info["approximate"]
    assert facts["coarse_steps"] == [2, 2, 2] and facts["interpolated_windows"] > facts["exact_windows"]
    assert actx.passes["forward"] < 0.6 * ctx.passes["forward"]  # measured 172 of 344
    r = float(np.corrcoef(exact.flatten().numpy(), approx.flatten().numpy())[0, 1])
    assert r >= 0.99  # measured 0.997
    assert torch.equal(torch.nonzero(exact == exact.max())[0], torch.nonzero(approx == approx.max())[0])
    error = float((exact - approx).abs().max() / exact.abs().max())
    print(f"approximate: {actx.passes['forward']} of {ctx.passes['forward']} passes, Pearson {r:.4f}, "
          f"largest voxel error {error:.3f} of the peak")
    assert error <= facts["tolerance"] and facts["sampled_error"] <= facts["tolerance"] and "why" not in facts


def test_approximate_tiling_occlusion_drills_down_from_merged_windows(demo, demo_x):
    """Tiling windows (nothing to interpolate between), 8 per axis at 128^3: windows merging 2^3 of the level
    below, scored from the coarsest down, their parts exactly only where the drop is high; on the demo within
    the tolerance, the same peak, with 50 of 513 passes (measured)."""
    x = F.interpolate(demo_x, size=(128,) * 3, mode="trilinear", align_corners=False)
    params = {"window": 16, "stride": 16, "refine": 0, "baseline": "blur", "score": "logit"}
    exact, _, ctx = attribute(demo, x, "occlusion", target=1, params=params)
    approx, info, actx = attribute(demo, x, "occlusion", target=1, params={**params, "approximate": True})
    facts = info["approximate"]
    assert facts["merged_levels"] == [[8, 8, 8], [4, 4, 4], [2, 2, 2]] and "why" not in facts
    assert actx.passes["forward"] < 0.12 * ctx.passes["forward"]
    stated = get_method("occlusion").estimate({**get_method("occlusion").params(params), "approximate": True},
                                              (128,) * 3)["forward"]
    assert 0.5 * actx.passes["forward"] <= stated <= 2 * actx.passes["forward"]  # the cost said before the run
    r = float(np.corrcoef(exact.flatten().numpy(), approx.flatten().numpy())[0, 1])
    assert r >= 0.99  # measured 0.9967
    assert torch.equal(torch.nonzero(exact == exact.max())[0], torch.nonzero(approx == approx.max())[0])
    assert float((exact - approx).abs().max() / exact.abs().max()) <= facts["tolerance"]  # measured 0.055


def test_approximate_occlusion_skips_nothing_with_too_few_windows_to_merge(demo, demo_x, boxes_wherever_they_match):
    """4 tiling windows per axis: merged windows would cost about what they save, so every window is scored.
    Both runs take the same path: boxes and full passes differ by float rounding on the logits, more than this
    test's tolerance on their differences."""
    params = {"window": 16, "stride": 16, "refine": 0, "baseline": "blur", "score": "logit"}
    exact, _, _ = attribute(demo, demo_x, "occlusion", target=1, params=params)
    approx, info, _ = attribute(demo, demo_x, "occlusion", target=1, params={**params, "approximate": True})
    assert info["approximate"]["interpolated_windows"] == 0 and "too few to merge" in info["approximate"]["why"]
    assert torch.allclose(exact, approx, atol=1e-6)


def test_approximate_occlusion_scores_every_window_where_the_map_cannot_be_interpolated():
    """An untrained network on noise: window drops without smooth structure; the sampled error says so."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(1))
    for window, stride in ((6, 3), (3, 3)):  # overlapping (interpolated lattice), tiling (8 per axis: merged)
        params = {"window": window, "stride": stride, "refine": 0, "baseline": "zeros", "score": "logit"}
        exact, _, ctx = attribute(net, x, "occlusion", target=1, params=params)
        approx, info, actx = attribute(net, x, "occlusion", target=1, params={**params, "approximate": True})
        facts = info["approximate"]
        assert facts["sampled_error"] > facts["tolerance"] and "every window scored exactly" in facts["why"]
        assert facts["interpolated_windows"] == 0 and actx.passes["forward"] >= ctx.passes["forward"]
        assert torch.allclose(exact, approx, atol=1e-5)
