"""The command line: explain over files, methods listing, demo."""
from __future__ import annotations

import json
import subprocess
import sys

import SimpleITK as sitk
import numpy as np
import pytest
from PIL import Image

from xaiexplain import read_volume, write_volume
from xaiexplain.cli.main import main
from xaiexplain.protocol import demo_bundle


def test_explain_writes_maps_previews_and_summary_on_the_input_grid(tmp_path, positive_case, capsys):
    image = tmp_path / "case.nii.gz"
    write_volume(positive_case.volume, image)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "gradcam",
                 "--method", "ig", "--param", "integrated-gradients.steps=8", "--target", "lesion",
                 "--out", str(out), "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["gradcam.nrrd", "gradcam.png", "integrated-gradients.nrrd",
                                                     "integrated-gradients.png", "summary.json"]
    source = read_volume(image)
    for name in ("gradcam", "integrated-gradients"):
        written = read_volume(out / f"{name}.nrrd")
        assert written.same_grid(source)
        png = Image.open(out / f"{name}.png")
        assert png.size[0] > 600 and np.asarray(png.convert("RGB")).std() > 10  # a real picture, not blank
    summary = json.loads((out / "summary.json").read_text())
    ig = summary["results"][1]
    assert ig["method"] == "integrated-gradients" and ig["params"]["steps"] == 8
    assert ig["target"] == {"kind": "class", "class": 1, "name": "lesion", "chosen": "given"}
    assert ig["versions"]["torch"] and ig["versions"]["monai"] and ig["seed"] == 0
    assert ig["model"]["format"] == "bundle" and len(ig["model"]["sha256"]) == 64
    assert ig["timings"]["backward"] == 8 and ig["info"]["completeness_error"] < 0.1
    gc = read_volume(out / "gradcam.nrrd").array[0]
    assert summary["results"][0]["map"]["peak_index"] == list(np.unravel_index(int(gc.argmax()), gc.shape))
    assert "prediction:" in capsys.readouterr().out


def test_multichannel_inputs_on_different_grids_are_resampled_onto_the_first(tmp_path, positive_case):
    from xaiexplain import explain
    from xaiexplain.core.volume import resample_to
    from xaiexplain.synthlesion.demo_model import SynthLesionNet
    from xaiexplain.synthlesion.train import DEMO_PREPROCESSING

    first = positive_case.volume
    other = resample_to(first, type(first)(np.zeros((1, 40, 40, 40), np.float32), first.spacing * 1.6,
                                           first.origin, first.direction))
    net = SynthLesionNet(in_channels=2).eval()
    res = explain(net, [first, other], "gradient", preprocessing=DEMO_PREPROCESSING)[0]
    assert res.channel_maps is not None and res.channel_maps.n_channels == 2
    assert res.map.same_grid(first)
    assert any("resampled" in n for n in res.notes)
    assert np.allclose(res.channel_maps.array.sum(0), res.array, atol=1e-6)


def test_the_share_of_each_input_channel_is_recorded_and_printed(tmp_path, positive_case, capsys):
    """A network that cannot see its first channel: all of the gradient's mass is on the second."""
    import torch

    from xaiexplain.synthlesion.demo_model import SynthLesionNet
    from xaiexplain.synthlesion.train import DEMO_PREPROCESSING

    net = SynthLesionNet(in_channels=2).eval()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    with torch.no_grad():
        first.weight[:, 0] = 0
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    (tmp_path / "net.json").write_text(json.dumps({"in_channels": 2, "preprocessing": DEMO_PREPROCESSING}))
    image = tmp_path / "t1.nrrd"
    write_volume(positive_case.volume, image)
    flair = tmp_path / "flair.nrrd"
    write_volume(positive_case.volume.with_array(positive_case.volume.array[::-1].copy() * 0.5 + 1), flair)
    out = tmp_path / "out"
    assert main(["explain", "--model", str(path), "--input", str(image), "--input", str(flair), "--method",
                 "gradient", "--out", str(out), "--quiet", "--no-previews"]) == 0
    shares = json.loads((out / "summary.json").read_text())["results"][0]["info"]["channel_shares"]
    assert [s["channel"] for s in shares] == ["t1", "flair"]
    assert shares[0]["abs_share"] == 0.0 and shares[1]["abs_share"] == pytest.approx(1.0)
    assert "channels: t1 0%, flair 100%" in capsys.readouterr().out


def test_methods_lists_the_registry():
    run = subprocess.run([sys.executable, "-m", "xaiexplain.cli.main", "methods", "--json"], capture_output=True,
                         text=True, check=True)
    listed = {m["name"]: m for m in json.loads(run.stdout)}
    assert set(listed) == {"gradient", "gradient-x-input", "smoothgrad", "integrated-gradients", "guided-backprop",
                           "deconvnet", "cam", "gradcam", "gradcampp", "guided-gradcam", "lrp", "deeplift",
                           "deepshap", "occlusion", "occlusion-regions", "rise", "lime", "kernel-shap",
                           "channel-shapley", "probability", "entropy", "tta-uncertainty", "mc-dropout",
                           "feature-map", "attention-gates", "attention-rollout", "attention-head", "prototypes"}
    assert listed["entropy"]["family"] == "uncertainty" and not listed["entropy"]["classification"]
    assert {n for n, m in listed.items() if m["kind"] == "ad-hoc"} == {
        "probability", "entropy", "tta-uncertainty", "mc-dropout", "feature-map", "attention-gates",
        "attention-rollout", "attention-head", "prototypes"}
    assert not listed["attention-rollout"]["through_windows"] and listed["lrp"]["through_windows"]
    assert listed["occlusion-regions"]["needs_regions"] and listed["occlusion-regions"]["cost"]["per"] == "region"
    assert listed["gradcam"]["needs_layers"] and not listed["gradcam"]["signed"]
    assert listed["integrated-gradients"]["cost"] == {"forward": 35, "backward": 32}  # with the auto baseline's probe
    assert listed["lrp"]["family"] == "propagation" and listed["lrp"]["completeness"]
    assert listed["lrp"]["defaults"]["composite"] == "epsilon-plus-flat"


def test_demo_command(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--method", "gradcam", "--method", "gradient", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo"]["case"]["positive"] is True
    assert set(summary["demo"]["checks"]) == {"gradcam", "gradient"}
    for name in ("input.nrrd", "lesion_mask.nrrd", "counterfactual.nrrd", "gradcam.nrrd", "gradcam.png"):
        assert (out / name).exists()
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lesion_mask.nrrd")))
    assert lesion.sum() == summary["demo"]["lesion_voxels"] > 0


def test_demo_default_runs_every_quick_method(tmp_path):
    """The README's first command: every registered method but the (minutes-long) perturbation family,
    DeepSHAP against the case's counterfactual."""
    from xaiexplain.methods import REGISTRY
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    quick = {name for name, m in REGISTRY.items()
             if m.family != "perturbation" and m.classification and m.kind == "post-hoc"}
    assert set(summary["demo"]["checks"]) == quick and "deepshap" in quick
    assert all((out / f"{name}.nrrd").exists() for name in quick)


def test_preprocessing_flags_and_contrast_reach_the_result(tmp_path, positive_case, capsys):
    image = tmp_path / "case.nrrd"
    write_volume(positive_case.volume, image)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "gradient",
                 "--orientation", "LPS", "--spacing", "4", "4", "4", "--size", "48", "48", "48",
                 "--intensity", "range:0,9000,0,1", "--target", "lesion", "--versus", "healthy",
                 "--out", str(out), "--quiet"])
    assert code == 0
    result = json.loads((out / "summary.json").read_text())["results"][0]
    assert result["info"]["preprocessing"] == {
        "orientation": "LPS", "spacing": [4.0, 4.0, 4.0], "spatial_size": [48, 48, 48],
        "intensity": {"kind": "range", "a_min": 0.0, "a_max": 9000.0, "b_min": 0.0, "b_max": 1.0, "clip": False}}
    assert result["target"]["kind"] == "contrast" and result["target"]["name"] == "lesion vs healthy"
    assert read_volume(out / "gradient.nrrd").same_grid(read_volume(image))
    capsys.readouterr()
    assert main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "gradient",
                 "--intensity", "sigmoid", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "cannot read --intensity 'sigmoid'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_lrp_and_deepshap_with_reference_volumes(tmp_path, positive_case, capsys):
    """LRP with a composite chosen by --param; DeepLIFT from the counterfactual (--baseline); DeepSHAP over
    --reference volumes (the counterfactual and a blur)."""
    from scipy.ndimage import gaussian_filter

    from xaiexplain.core.volume import Volume

    image, healthy, blurred = tmp_path / "case.nrrd", tmp_path / "healthy.nii.gz", tmp_path / "blur.nrrd"
    write_volume(positive_case.volume, image)
    write_volume(positive_case.counterfactual, healthy)
    cf = positive_case.counterfactual
    write_volume(Volume(gaussian_filter(cf.array, (0, 2, 2, 2)), cf.spacing, cf.origin, cf.direction), blurred)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "lrp",
                 "--param", "lrp.composite=alpha2-beta1", "--method", "deepshap", "--method", "deeplift",
                 "--baseline", str(healthy), "--reference", str(healthy), "--reference", str(blurred),
                 "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    lrp, shap, lift = summary["results"]
    assert lrp["params"]["composite"] == "alpha2-beta1" and lrp["info"]["rules_applied"]["alpha2-beta1"] > 0
    assert shap["info"]["references"] == 2 and shap["info"]["completeness_error"] < 0.01
    assert lift["info"]["references"] == 1 and lift["info"]["completeness_error"] < 0.01
    assert lift["params"]["baseline"] == str(healthy)
    # against the counterfactual, the change lies in the lesion: the peak is there
    lesion = positive_case.lesion_mask.array[0] > 0
    peak = np.unravel_index(np.argmax(read_volume(out / "deeplift.nrrd").array[0]), lesion.shape)
    from scipy.ndimage import binary_dilation
    assert binary_dilation(lesion, iterations=2)[peak]
    assert main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "deepshap",
                 "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "reference" in capsys.readouterr().err and not (tmp_path / "none").exists()
