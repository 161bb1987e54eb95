"""deepbet's trained brain-extraction network (TorchScript, softmax output) on the real Colin27 head scan.

Material nobody here made: the network ships in the deepbet wheel, the scan and an independent
brain extraction (ch2bet) in Debian's mricron-data. Each map's positive evidence for "brain"
must lie mostly in the brain deepbet finds, and the sums of the methods that have them must add up.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from xaiexplain import XAIError, explain, load_model, prepare_case
from xaiexplain.core.volume import read_volume, write_volume
from xaiexplain.real import deepbet
from xaiexplain.real.demo import MARGIN_VOXELS, positive_share_inside
from xaiexplain.real.material import colin27, deepbet_model, dice

try:
    SCAN, REFERENCE, MODEL = colin27("ch2"), colin27("ch2bet"), deepbet_model()
except XAIError as missing:  # .ci/run installs both; say what is missing anywhere else
    pytest.skip(str(missing), allow_module_level=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = load_model(deepbet.write_model(tmp_path_factory.mktemp("deepbet")), device="cpu")
    return prepare_case(model, str(SCAN), device="cpu")


@pytest.fixture(scope="module")
def brain(case):
    return case.to_input_grid((case.output()[0, 1:2] > 0.5).float())[0] > 0.5


def test_deepbet_finds_the_brain_that_an_independent_extraction_finds(case, brain):
    assert case.x.shape == (1, 1, 128, 128, 128)
    assert dice(brain, read_volume(REFERENCE).array[0] > 0) >= 0.93


def test_deepbet_without_metadata_is_seen_to_output_probabilities(case):
    bare = load_model(MODEL, device="cpu")  # the TorchScript file alone, no sidecar
    bare.output(case.x)
    assert bare.output_kind == "probabilities"
    result = explain(None, case, ["gradient"], target="brain")[0]
    assert result.prediction["output_kind"] == "probabilities"


@pytest.fixture(scope="module")
def maps(case):
    methods = ["gradcam", "gradient", "lrp", "deeplift", "feature-map"]
    results = explain(None, case, methods, target="brain",  # default parameters: they must work here
                      params={"feature-map": {"rank_by": "lrp", "top": 64}})
    return {r.method: r for r in results}


@pytest.mark.parametrize("method", ["gradcam", "gradient", "lrp", "deeplift", "feature-map"])
def test_the_evidence_for_brain_lies_mostly_in_the_brain(maps, brain, method, case):
    result = maps[method]
    assert result.array.shape == case.volume.array.shape[1:]
    assert positive_share_inside(result.array, brain) > 0.5


def test_the_layer_methods_ran_on_the_torchscript_converted_to_a_program(maps, case):
    assert case.model.converted_from == "torchscript"
    assert maps["gradcam"].model["converted_from"] == "torchscript"
    assert maps["gradcam"].info["layer"] != "tp_conv2"  # not the output head


def test_deeplift_sums_to_delta_on_deepbet(maps):
    assert maps["deeplift"].info["completeness_error"] < 0.01


def test_lrp_conserves_relevance_on_deepbet_but_what_its_biases_absorb(maps):
    info = maps["lrp"].info  # deepbet's convolutions have biases: measured 7.4% absorbed, recorded
    print("LRP on deepbet: absorbed", info["absorbed_by"], "unbooked", info["conservation_error"])
    assert info["completeness_error"] < 0.1
    assert info["absorbed_share"][0] == pytest.approx(info["completeness_error"], abs=1e-6)
    # every bit of it booked where LRP lets relevance go (a bias, a stabiliser): none lost or made off the rules
    assert info["conservation_error"] < 1e-4
    assert sum(shares[0] for shares in info["absorbed_by"].values()) == pytest.approx(info["absorbed_share"][0],
                                                                                       abs=1e-4)
    assert info["norm_rule"] == "pass" and info["rules_applied"]["pass-norm"] == 34


def test_feature_map_channels_ranked_by_lrp_on_deepbet(maps, brain):
    """The layer Grad-CAM uses (its last before the output head): the LRP relevance its channels hold adds up
    to the score less what the head absorbs (measured: 5e-8 of it), and to more than reaches the input (the
    biases below absorb 7%); the top channel's activation lies mostly in the brain (measured: 83%)."""
    info, lrp = maps["feature-map"].info, maps["lrp"].info
    assert info["layer"] == maps["gradcam"].info["layer"] and info["ranked_by"] == "lrp"
    assert len(info["ranking"]) == info["layer_channels"]
    total = sum(r["contribution"] for r in info["ranking"])
    assert total == pytest.approx(lrp["score"][0], rel=0.01) and total > lrp["relevance_sum"][0]
    assert info["channel"] == info["ranking"][0]["channel"]
    assert positive_share_inside(maps["feature-map"].array, brain) > 0.6


def test_deeplift_chose_a_baseline_the_network_can_see(maps):
    assert maps["deeplift"].info["baseline"] == "blur" and not maps["deeplift"].warnings


@pytest.mark.slow
def test_integrated_gradients_with_its_defaults_adds_up_on_deepbet(case, brain):
    result = explain(None, case, ["integrated-gradients"], target="brain")[0]
    assert result.info["baseline"] == "blur" and not result.warnings
    assert result.info["completeness_error"] < 0.05
    assert positive_share_inside(result.array, brain) > 0.5


def test_the_real_demo_command_writes_maps_and_prints_the_agreement(tmp_path, capsys):
    from xaiexplain.cli.main import main
    assert main(["demo", "--real", "--out", str(tmp_path), "--method", "gradient", "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["demo"]["dice_vs_reference"] >= 0.93
    assert f"Dice {summary['demo']['dice_vs_reference']:.3f} against ch2bet" in printed
    assert (tmp_path / "gradient.nrrd").exists() and (tmp_path / "gradient.png").exists()
    side = json.loads((tmp_path / "model" / "deepbet_bbox.json").read_text())
    assert side["output"] == "probabilities" and side["class_names"] == ["background", "brain"]
    mask = read_volume(tmp_path / "predicted_brain.nrrd").array[0]
    assert np.isin(np.unique(mask), [0, 1]).all()


def test_deepbet_through_sliding_windows_on_the_whole_scan(tmp_path):
    """At its 1.5 mm the head is 121 x 145 x 121 voxels: two 128^3 windows, blended, instead of a crop to 128^3."""
    spec = {k: v for k, v in deepbet.METADATA["preprocessing"].items() if k != "spatial_size"}
    model = load_model(deepbet.write_model(tmp_path), device="cpu", preprocessing=spec,
                       inferer={"roi_size": [128, 128, 128], "overlap": 0.25})
    case = prepare_case(model, str(SCAN), device="cpu", roi="component:1")
    assert case.x.shape == (1, 1, 121, 145, 121)
    brain = case.predicted_labels() == 1
    assert dice(brain, read_volume(REFERENCE).array[0] > 0) >= 0.9
    results = explain(None, case, ["gradient", "lrp", "gradcam"], target="brain")  # measured 0.69, 0.87, 0.82
    for result in results:
        assert result.info["sliding_window"]["windows"] == 2
        assert result.info["sliding_window"]["windows_on_target"] == [2]
        assert positive_share_inside(result.array, brain) > 0.5, result.method
    assert results[1].info["completeness_error"] < 0.1  # what the biases absorb (7.2%), as without windows


def test_a_cohort_of_real_scans_with_deepbet(tmp_path):
    """The cohort command on real material: deepbet (TorchScript with its sidecar) on Colin27 and on Colin27
    mirrored left-right, each with its own brain / outside labels from ch2bet (the brain grown by the margin
    the other checks give its boundary, a decision boundary with evidence on both sides: ungrown, the gradient
    sums to -0.21 inside and +0.24 outside; grown, +0.20 and -0.17). Both cases are done, their maps are those
    of single explain runs, and the findings rank the brain first in both."""
    from cohort_data import same_maps
    from scipy import ndimage

    from xaiexplain.cli.main import main

    scan, mask = read_volume(SCAN), read_volume(REFERENCE)
    rows = []
    for name, flip in (("colin", False), ("mirrored", True)):
        image = scan.array[:, ::-1].copy() if flip else scan.array
        brain_mask = ndimage.binary_dilation((mask.array[0, ::-1] if flip else mask.array[0]) > 0,
                                             iterations=MARGIN_VOXELS)
        write_volume(scan.with_array(image), tmp_path / f"{name}.nii.gz")
        write_volume(scan.with_array(np.where(brain_mask, 1, 2).astype(np.int16)[None], ["labels"]),
                     tmp_path / f"{name}_labels.nii.gz")
        rows.append(f"{name},{name}.nii.gz,{name}_labels.nii.gz\n")
    (tmp_path / "cases.csv").write_text("case,input,labels\n" + "".join(rows))
    (tmp_path / "names.csv").write_text("id,name\n1,brain\n2,outside the brain\n")
    model = deepbet.write_model(tmp_path / "model")
    out = tmp_path / "cohort"
    common = ["--method", "gradient", "--target", "brain", "--region-names", str(tmp_path / "names.csv"),
              "--no-previews", "--quiet"]
    assert main(["cohort", "--model", str(model), "--cases", str(tmp_path / "cases.csv"), "--out", str(out),
                 *common]) == 0
    records = {p.stem: json.loads(p.read_text())["status"] for p in (out / "manifest").glob("*.json")}
    assert records == {"colin": "done", "mirrored": "done"}
    single = tmp_path / "single"
    assert main(["explain", "--model", str(model), "--input", str(tmp_path / "mirrored.nii.gz"), "--regions",
                 str(tmp_path / "mirrored_labels.nii.gz"), "--out", str(single), *common]) == 0
    same_maps(out / "mirrored", single, "gradient")
    regions = json.loads((out / "findings.json").read_text())["methods"]["gradient"]["regions"]["all cases"]
    assert regions[0]["region"] == "brain" and regions[0]["cases"] == 2 and regions[0]["top1_share"] == 1.0
