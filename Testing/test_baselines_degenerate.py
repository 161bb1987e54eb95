"""Baselines the network cannot see: on a scale-invariant network (instance norm, f(a x) = f(x)) the path a x
from zeros is flat, so integrated gradients from zeros explains almost nothing of score(x) - score(0).

Detected (completeness error, the probe f(x / 2) against f(x), the baseline's own score), said in the result,
summary.json, the CLI, the preview and Slicer, and avoided by the default ('auto' picks blur there).
"""
from __future__ import annotations

import io
import json
import sys
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from torch import nn

from xaiexplain.core.attribute import attribute
from xaiexplain.core.targets import SegmentationTarget


class InstanceNet(nn.Module):
    """conv -> instance norm -> ReLU, twice, -> a linear head: scale-invariant, as deepbet and nnU-Net are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.ReLU(),
            nn.Conv3d(4, 4, 3, padding=1, stride=2), nn.InstanceNorm3d(4), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
        with torch.no_grad():  # an untrained affine norm is the identity: give it a shape
            self.features[1].weight.normal_()
            self.features[1].bias.normal_()

    def forward(self, x):
        return self.features(x)


def _input(size: int = 16) -> torch.Tensor:
    noise = torch.randn((1, 1, size, size, size), generator=torch.Generator().manual_seed(1))
    return noise + torch.linspace(0, 2, size).view(1, 1, size, 1, 1)


@pytest.fixture(scope="module")
def inet():
    return InstanceNet().eval()


def get_cost(name: str, params: dict | None = None) -> dict:
    from xaiexplain.methods import get_method

    method = get_method(name)
    return method.cost(method.params(params))


def codes(info: dict) -> list[str]:
    return [w["code"] for w in info.get("warnings", [])]


def test_the_network_is_scale_invariant(inet):
    x = _input()
    with torch.no_grad():
        assert torch.allclose(inet(x), inet(0.5 * x), atol=1e-5)


def test_zeros_baseline_is_detected_and_warned_with_the_fix(inet):
    """Today's defect: completeness error 1.42 with zeros at 32 steps, and nothing said."""
    _, info, ctx = attribute(inet, _input(), "integrated-gradients", target=1, params={"baseline": "zeros"})
    assert info["completeness_error"] > 0.5
    assert codes(info) == ["blind-baseline"]  # today: no warning at all
    (warning,) = info["warnings"]
    assert warning["method"] == "integrated-gradients" and info["baseline"] == "zeros"
    assert warning["message"].startswith(f"completeness error {info['completeness_error']:.2f} with the zeros baseline")
    assert "cannot see" in warning["message"] and "scale-invariant" in warning["message"]
    assert "--param integrated-gradients.baseline=blur" in warning["fix"]
    assert info["halving_score_change"][0] < 1e-3
    assert ctx.passes == {"forward": 35, "backward": 32}  # steps + input + baseline + the probe (x / 2)


def test_the_default_baseline_is_complete_on_a_scale_invariant_network(inet):
    maps, info, ctx = attribute(inet, _input(), "integrated-gradients", target=1)
    assert info["completeness_error"] < 0.05 and "warnings" not in info  # today: 1.42 (from zeros)
    assert info["baseline"] == "blur" and info["baseline_choice"].startswith("auto: halving the input changed")
    assert ctx.passes["forward"] == 35 == get_cost("integrated-gradients")["forward"]
    blur, _, _ = attribute(inet, _input(), "integrated-gradients", target=1, params={"baseline": "blur"})
    assert torch.equal(maps, blur)  # auto is blur here, and says so


def test_the_uniform_baseline_is_noise_in_each_channels_range_and_made_again_from_the_input(inet):
    from xaiexplain.core.baselines import baseline_for

    x = torch.cat([_input(), 3 * _input() - 1], 1)
    noise = baseline_for(x, "uniform")
    assert noise.shape == x.shape and torch.equal(noise, baseline_for(x.clone(), "uniform"))
    for c in range(2):
        low, high = x[:, c].min(), x[:, c].max()
        margin = 0.01 * (high - low)
        assert low <= noise[:, c].min() < low + margin and high - margin < noise[:, c].max() <= high
        assert abs(float(noise[:, c].mean() - (low + high) / 2)) < 0.01 * float(high - low)
    assert abs(float(torch.corrcoef(noise.flatten(2)[0])[0, 1])) < 0.05  # channels drawn independently
    # the network sees it; the longer path through its nonlinearities needs more steps than blur's (0.003 at 32)
    _, short, _ = attribute(inet, _input(), "integrated-gradients", target=1, params={"baseline": "uniform"})
    assert short["completeness_error"] > 0.1 and codes(short) == ["completeness"]  # measured 0.20, and warned
    _, info, _ = attribute(inet, _input(), "integrated-gradients", target=1,
                           params={"baseline": "uniform", "steps": 128})
    assert info["baseline"] == "uniform" and info["completeness_error"] < 0.05 and "warnings" not in info


def test_integrated_gradients_over_several_noise_baselines_is_the_mean_of_their_maps():
    from xaiexplain.core.baselines import UNIFORM_SEED, uniform_noise
    from xaiexplain.errors import XAIError
    from xaiexplain.metrics import Scorer, completeness

    torch.manual_seed(5)  # no instance norm: noise scores far enough from the input for a relative error to mean much
    inet = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = _input()
    params = {"baseline": "uniform", "baselines": 3, "steps": 64}
    mean, info, _ = attribute(inet, x, "integrated-gradients", target=1, params=params)
    singles = [attribute(inet, x, "integrated-gradients", target=1,
                         params={"baseline": uniform_noise(x, draw), "steps": 64})[0] for draw in range(3)]
    assert torch.allclose(mean, sum(singles) / 3, atol=1e-6)
    assert info["baseline_seeds"] == [UNIFORM_SEED, UNIFORM_SEED + 1, UNIFORM_SEED + 2]
    # the draws differ: the mean is not one of them
    assert float((singles[0] - singles[1]).abs().max()) > 0.1 * float(singles[0].abs().max())
    # the sum is score(x) minus the baselines' mean score, as the completeness metric measures it
    out = completeness(Scorer.for_model(inet, x, target=1), mean, "integrated-gradients", params)
    assert info["completeness_error"] < 0.01 and "warnings" not in info  # measured 0.0012
    assert out["completeness_error"] == pytest.approx(info["completeness_error"], rel=1e-3, abs=1e-5)
    assert get_cost("integrated-gradients", params) == {"forward": 3 * 65 + 1, "backward": 3 * 64}
    with pytest.raises(XAIError, match=r"baselines=3 averages draws of a random baseline, and 'blur' is always") as err:
        attribute(inet, x, "integrated-gradients", target=1, params={"baseline": "blur", "baselines": 3})
    assert "\n" not in str(err.value) and "Add --param integrated-gradients.baseline=uniform" in str(err.value)


def test_a_monai_unet_with_instance_norm():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0, norm="instance").eval()
    x = _input()
    target = SegmentationTarget(1, None)
    _, zeros, _ = attribute(net, x, "integrated-gradients", target=target, params={"baseline": "zeros", "steps": 8})
    assert zeros["completeness_error"] > 0.2 and codes(zeros) == ["blind-baseline"]
    _, auto, _ = attribute(net, x, "integrated-gradients", target=target, params={"steps": 8})
    assert auto["baseline"] == "blur" and auto["completeness_error"] < 0.05 and "warnings" not in auto


def test_deeplift_and_deepshap_from_a_blind_baseline(inet):
    x = _input()
    _, info, ctx = attribute(inet, x, "deeplift", target=1, params={"baseline": "zeros"})
    # summation to delta holds (against the input's normalisation statistics): only the probe tells
    assert info["completeness_error"] < 1e-3 and codes(info) == ["blind-baseline"]
    assert info["completeness_error_own_statistics"] > 1.0  # the network's own score of zeros is another story
    assert ctx.passes == {"forward": 3, "backward": 1}
    _, auto, _ = attribute(inet, x, "deeplift", target=1)
    assert auto["baseline"] == "blur" and "warnings" not in auto
    _, shap, _ = attribute(inet, x, "deepshap", target=1, references=torch.cat([torch.zeros_like(x), 0.3 * x]))
    assert codes(shap) == ["blind-baseline"] and "reference volumes with contrast" in shap["warnings"][0]["fix"]


def test_a_baseline_that_scores_as_the_input_carries_no_information(inet):
    x = _input()
    for method in ("integrated-gradients", "deeplift"):
        _, info, _ = attribute(inet, x, method, target=1, params={"baseline": x.clone()})
        assert "uninformative-baseline" in codes(info), method
        assert "carries no information" in info["warnings"][-1]["message"]


def test_the_demo_network_is_not_warned_and_its_maps_are_unchanged(demo, demo_x):
    """Not scale-invariant (halving the input moves its logit by 77%): auto is zeros, exactly as before."""
    auto, info, _ = attribute(demo, demo_x, "integrated-gradients", params={"steps": 4})
    zeros, explicit, _ = attribute(demo, demo_x, "integrated-gradients", params={"steps": 4, "baseline": "zeros"})
    assert torch.equal(auto, zeros) and info["completeness_error"] == explicit["completeness_error"]
    _, lift, _ = attribute(demo, demo_x, "deeplift")
    for record in (info, lift):
        assert record["baseline"] == "zeros" and record["baseline_choice"].endswith("the network sees a zeros baseline")
        assert record["halving_score_change"][0] > 0.5
    assert not any("warnings" in record for record in (info, explicit, lift))
    _, coarse, _ = attribute(demo, demo_x, "integrated-gradients", params={"steps": 2})  # error 0.27: too few steps
    assert codes(coarse) == ["completeness"] and "raise --param integrated-gradients.steps (now 2)" in \
        coarse["warnings"][0]["fix"]


def test_the_completeness_metric_measures_from_the_baseline_auto_chose(inet):
    from xaiexplain.errors import XAIError
    from xaiexplain.methods import get_method
    from xaiexplain.metrics import Scorer, completeness
    from xaiexplain.metrics.catalogue import Completeness

    x = _input()
    maps, info, _ = attribute(inet, x, "integrated-gradients", target=1)
    scorer = Scorer.for_model(inet, x, target=1)
    out = completeness(scorer, maps, "integrated-gradients")
    assert out["completeness_error"] == pytest.approx(info["completeness_error"], rel=1e-3, abs=1e-5)
    ig = get_method("integrated-gradients")
    stated = Completeness().cost({}, ig, ig.params({}), x=x, model=None, n_classes=2)
    assert scorer.passes == stated["forward"] == 3  # the baseline's score and the probe (x, x / 2)
    with pytest.raises(XAIError, match="auto baseline is chosen by probing"):
        ig.completeness_baseline(x, ig.params({}))


def _save_network(path) -> str:
    with warnings.catch_warnings():  # torch 2.x deprecates TorchScript, which real networks still ship as
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(InstanceNet().eval().features).save(str(path))
    return str(path)


def _write_input(path) -> str:
    from xaiexplain import write_volume
    from xaiexplain.core.volume import Volume

    write_volume(Volume(_input()[0].numpy(), np.ones(3), np.zeros(3), np.eye(3)), path)
    return str(path)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The CLI on the scale-invariant network from zeros (warned) and from the default (not)."""
    from xaiexplain.cli.main import main

    folder = tmp_path_factory.mktemp("cli")
    model, image = _save_network(folder / "inet.pt"), _write_input(folder / "case.nii.gz")
    runs = {}
    for name, extra in (("zeros", ["--param", "integrated-gradients.baseline=zeros"]), ("default", [])):
        out = folder / name
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            code = main(["explain", "--model", model, "--input", image, "--method", "ig", "--target", "1",
                         "--out", str(out), "--quiet"] + extra)
        runs[name] = (code, buffer.getvalue(), out)
    return runs


def test_the_cli_summary_and_read_results_carry_the_warning(cli_runs):
    from xaiexplain.io.outputs import read_results

    code, stdout, out = cli_runs["zeros"]
    assert code == 0
    assert "  WARNING: integrated-gradients: completeness error" in stdout and "cannot see" in stdout
    assert "--param integrated-gradients.baseline=blur" in stdout and "1 warning(s) above" in stdout
    item = json.loads((out / "summary.json").read_text())["results"][0]
    assert [w["code"] for w in item["warnings"]] == ["blind-baseline"] and "warnings" not in item["info"]
    (back,) = read_results(out)
    assert back.warnings == item["warnings"] and back.to_dict()["warnings"] == item["warnings"]
    code, stdout, out = cli_runs["default"]
    assert code == 0 and "WARNING" not in stdout
    item = json.loads((out / "summary.json").read_text())["results"][0]
    assert item["warnings"] == [] and item["info"]["baseline"] == "blur" and item["params"]["baseline"] == "auto"
    assert item["info"]["completeness_error"] < 0.05


def test_the_preview_shows_the_warning(cli_runs):
    from PIL import Image

    warned = np.asarray(Image.open(cli_runs["zeros"][2] / "integrated-gradients.png").convert("RGB")).astype(int)
    clean = np.asarray(Image.open(cli_runs["default"][2] / "integrated-gradients.png").convert("RGB")).astype(int)
    assert warned.shape[0] > clean.shape[0] and warned.shape[1] == clean.shape[1]  # a band for the warning

    def red_text(image):  # the warning's dark red letters (#b00000) in the bottom eighth of the picture
        band = image[-image.shape[0] // 8:]
        return int(((band[..., 0] > 120) & (band[..., 1] < 60) & (band[..., 2] < 60)).sum())

    assert red_text(warned) > 200 and red_text(clean) == 0


@pytest.mark.slow
def test_deepbet_zeros_against_the_default():
    """deepbet's LinkNet3d (instance norm) on Colin27 at 64^3: measured 0.909 (zeros) and 0.0048 (auto -> blur)
    at 32 steps; zeros here at 8 steps (1.00), which runs 4x faster than at 32."""
    import SimpleITK as sitk
    import torch.nn.functional as F

    from xaiexplain.real.material import colin27, deepbet_model

    net = torch.jit.load(str(deepbet_model())).eval()
    scan = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(colin27()))).astype(np.float32))[None, None]
    x = F.interpolate(scan, (64, 64, 64), mode="nearest-exact")
    low, high = x.quantile(0.005), x.quantile(0.995)
    x = ((x - low) / (high - low)).clamp(0, 1)
    x = 0.226 * (x - x.mean()) / x.std() + 0.449  # deepbet's own normalisation
    target = SegmentationTarget(1, None)
    _, zeros, _ = attribute(net, x, "integrated-gradients", target=target,
                            params={"baseline": "zeros", "steps": 8, "batch_size": 4})
    assert zeros["completeness_error"] > 0.5 and codes(zeros) == ["blind-baseline"]
    _, auto, _ = attribute(net, x, "integrated-gradients", target=target, params={"batch_size": 4})
    assert auto["baseline"] == "blur" and auto["completeness_error"] < 0.05 and "warnings" not in auto


def test_slicer_shows_the_warning(harness, tmp_path):
    from XAIExplainLib import display, volumenodes
    from XAIExplainLib.logic import ExplainLogicBase

    from xaiexplain.core.volume import read_volume

    harness.clear()
    try:
        logic = ExplainLogicBase(harness.scene, vrLogic=harness.vrLogic, python=sys.executable)
        volume = read_volume(_write_input(tmp_path / "case.nii.gz"))
        node = volumenodes.addVolumeNode(logic.scene, volume.array[0], "case", volume=volume)
        (result,) = logic.process(node, _save_network(tmp_path / "inet.pt"), ["integrated-gradients"], target=1,
                                  params={"integrated-gradients": {"baseline": "zeros", "steps": 8}},
                                  useWorker=False, show=False)
        (text,) = display.warnings(result)
        assert text.startswith("integrated-gradients: completeness error") and "baseline=blur" in text
        assert result.GetAttribute("XAIExplain.warnings") == text
        assert logic.lastWarnings == [text] and text in logic.describeWarnings()
        assert f"WARNING: {text}" in logic.describeResult(result)
        assert display.record(result)["warnings"][0]["code"] == "blind-baseline"
    finally:
        harness.clear()
