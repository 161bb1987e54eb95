"""The module's logic without Qt, as the Python console uses it: runs, display, regions, sample data, dependencies.

Also renders a real case (SynthLesion + the demo classifier's Grad-CAM) in the Red
slice view and the 3D view; with XAIEXPLAIN_SCREENSHOTS=DIR the images are kept there
(the README's screenshots are made so).
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from XAIExplainLib import colormaps, dependencies, display, regions, volumenodes  # noqa: E402
from XAIExplainLib.logic import QUICK_PASSES  # noqa: E402
from XAIExplainLib.request import ExplainRequest  # noqa: E402
from XAIExplainLib.results import addRegionResults  # noqa: E402
from XAIExplainLib.runners import WorkerRunner  # noqa: E402


@pytest.fixture()
def t1(logic, positive_case):
    return volumenodes.addVolumeNode(logic.scene, positive_case.volume.array[0], "T1", volume=positive_case.volume)


def test_quick_methods_run_in_process_long_ones_in_a_worker(logic):
    assert logic.estimatePasses(["gradcam"]) == 2
    assert not logic.shouldUseWorker(["gradcam", "gradient"])
    assert logic.estimatePasses(["smoothgrad"], {"smoothgrad": {"samples": 50}}) == 100 > QUICK_PASSES
    assert logic.shouldUseWorker(["smoothgrad"]) and logic.shouldUseWorker(["integrated-gradients"])
    assert logic.shouldUseWorker(["gradcam"], useWorker=True) and not logic.shouldUseWorker(["smoothgrad"], useWorker=False)
    from xaiexplain.methods.base import REGISTRY, Method

    class Occluder(Method):  # a perturbation method costs one pass per region: never in-process
        name, title, family, defaults = "test-occluder", "test", "perturbation", {}

        def cost(self, params):
            return {"forward": 1, "backward": 0, "per": "region"}

    REGISTRY["test-occluder"] = Occluder()
    try:
        assert logic.estimatePasses(["test-occluder"]) == 1 and logic.shouldUseWorker(["test-occluder"])
    finally:
        del REGISTRY["test-occluder"]
    described = logic.methodDescriptions()
    assert {"gradcam", "integrated-gradients"} <= {m["name"] for m in described}
    assert all({"name", "title", "family", "signed", "reference"} <= set(m) for m in described)


def test_worker_or_in_process_by_cost_and_panel_parameters_from_the_registry(logic):
    from xaiexplain.methods.base import REGISTRY, Method

    class Cheap(Method):  # a perturbation method whose cost is small and fixed: in-process, whatever its family
        name, title, family, defaults = "test-cheap", "test", "perturbation", {}

        def cost(self, params):
            return {"forward": 3, "backward": 0}

    REGISTRY["test-cheap"] = Cheap()
    try:
        assert not logic.shouldUseWorker(["test-cheap"])
    finally:
        del REGISTRY["test-cheap"]
    assert logic.describeCost(["gradcam"]) == "About 2 forward/backward passes, run in Slicer."
    assert logic.describeCost(["occlusion"]).endswith("per window, run in a separate process.")
    # the panel's fields are the registry's parameters, typed and bounded; 'object' ones stay console-only
    specs = {s["name"]: s for s in logic.methodParameters("smoothgrad")}
    assert specs["samples"]["type"] == "int" and specs["samples"]["min"] == 1 and specs["samples"]["default"] == 25
    assert {s["name"] for s in logic.methodParameters("lrp")} == {"composite", "epsilon", "norm_rule"}
    samples = logic.parameterField(specs["samples"])
    assert samples["kind"] == "int" and samples["low"] == 1 and not samples["auto"]
    batch = logic.parameterField({s["name"]: s for s in logic.methodParameters("occlusion")}["batch_size"])
    assert batch["auto"] and batch["low"] == 0 and logic.parameterValue(batch, 0) is None
    assert logic.parameterValue(batch, 7) == 7
    epsilon = logic.parameterField({s["name"]: s for s in logic.methodParameters("lrp")}["epsilon"])
    assert epsilon["kind"] == "float" and epsilon["decimals"] >= 7 and epsilon["low"] == 1e-12  # 0 divides
    baseline = logic.parameterField({s["name"]: s for s in logic.methodParameters("integrated-gradients")}["baseline"])
    assert baseline == {"kind": "choice", "choices": ["auto", "zeros", "mean", "blur", "uniform"]}
    text = logic.withMethodParameter("", "smoothgrad", "samples", 50)
    text = logic.withMethodParameter(text, "smoothgrad", "gone", 1)  # e.g. saved by another version
    assert logic.methodParametersFromText(text, ["smoothgrad", "gradcam"]) == {"smoothgrad": {"samples": 50}}
    assert logic.methodParametersFromText(text, ["gradcam"]) == {}
    values = {"smoothgrad": {"samples": 50}}
    assert ("smoothgrad", specs["samples"], 50) in logic.panelParameters(["smoothgrad"], values)
    assert logic.shouldUseWorker(["smoothgrad"], values) and logic.estimatePasses(["smoothgrad"], values) == 100


def test_in_process_run_from_the_console(harness, logic, t1, demo):
    done = []
    logic._models[(logic.demoModelPath(), "cpu")] = demo  # the session's loaded demo model
    nodes = logic.process(t1, logic.demoModelPath(), ["gradcam", "gradient"], target="lesion", device="cpu",
                          completionCallback=lambda *a: done.append(a))
    assert [n.GetName() for n in nodes] == ["T1 gradcam", "T1 gradient"]
    assert done == [("done", nodes, "")] and logic.lastResults == nodes
    gradcam, gradient = nodes
    assert not display.isSigned(gradcam) and display.isSigned(gradient)
    assert gradcam.GetDisplayNode().GetColorNode().GetName() == colormaps.INFERNO_NAME
    assert gradient.GetDisplayNode().GetColorNode().GetName() == "T1 gradient colours"
    assert all(volumenodes.sameGrid(n, t1, tolerance=1e-9) for n in nodes)
    # the last result shown is in the foreground of the slice views, over the input
    composite = harness.sliceLogic.GetSliceCompositeNode()
    assert composite.GetForegroundVolumeID() == gradient.GetID() and composite.GetBackgroundVolumeID() == t1.GetID()
    assert display.record(gradcam)["target"]["name"] == "lesion"
    assert logic.resultNodes() == nodes
    prediction = logic.predict(t1, logic.demoModelPath(), device="cpu")
    assert prediction["predicted_name"] == "lesion" and len(prediction["probabilities"]) == 2
    text = logic.describePrediction(prediction)
    assert text.startswith("Prediction: <b>lesion</b> (healthy 0.") and ("lesion 0.9" in text or "lesion 1.000" in text)
    assert logic.describeResult(gradcam).startswith("gradcam: target lesion, ")
    assert logic.modelClasses(logic.demoModelPath()) == ["healthy", "lesion"]


def test_in_process_cancel_and_failure(logic, t1, demo):
    logic._models[(logic.demoModelPath(), "cpu")] = demo
    done = []

    def cancel_at_once(fraction, message):
        assert logic.isRunning()  # the panel shows Cancel during an in-process run too
        logic.cancel()

    nodes = logic.process(t1, logic.demoModelPath(), ["smoothgrad"], params={"smoothgrad": {"samples": 4}},
                          device="cpu", useWorker=False, progressCallback=cancel_at_once,
                          completionCallback=lambda *a: done.append(a))
    assert nodes == [] and done == [("cancelled", [], "cancelled")] and logic.resultNodes() == []
    assert not logic.isRunning()
    with pytest.raises(Exception, match="no parameter"):  # checked before anything runs
        logic.process(t1, logic.demoModelPath(), ["gradcam"], params={"gradcam": {"bogus": 1}}, device="cpu")
    with pytest.raises(Exception, match="tumour"):  # fails during the run: reported, then raised
        logic.process(t1, logic.demoModelPath(), ["gradcam"], target="tumour", device="cpu",
                      completionCallback=lambda *a: done.append(a))
    assert done[-1][0] == "failed" and "tumour" in done[-1][2] and not logic.isRunning()


FAKE_ENGINE = textwrap.dedent("""
    # stands in for the engine CLI: progress lines, then the map (the input itself) and a summary
    import json, shutil, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    out, method = Path(args[args.index("--out") + 1]), args[args.index("--method") + 1]
    if method == "slow":
        print("xaiexplain-progress " + json.dumps({"fraction": 0.0, "message": "slow"}), flush=True)
        time.sleep(120)
    out.mkdir(parents=True)
    for f in (0.0, 0.5, 1.0):
        print("xaiexplain-progress " + json.dumps({"fraction": f, "message": method}), flush=True)
    shutil.copy(args[args.index("--input") + 1], out / f"{method}.nrrd")
    regions = [{"id": 1, "name": "left", "volume_ml": 2.0, "score": 0.5, "rank": 1},
               {"id": 2, "name": "right", "volume_ml": 3.0, "score": 0.1, "rank": 2}]
    item = {"method": method, "signed": True, "target": {"name": "lesion"}, "regions": regions}
    (out / "summary.json").write_text(json.dumps({"results": [item]}))
""")


def fake_popen(command, **kwargs):
    return subprocess.Popen([sys.executable, "-c", FAKE_ENGINE] + command[4:], **kwargs)


def test_worker_run_without_waiting_is_driven_by_poll(harness, logic):
    logic.popen = fake_popen
    node = volumenodes.addVolumeNode(logic.scene, np.linspace(-1, 1, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8),
                                     "in")
    progress, done = [], []
    running = logic.process(node, "some-model", ["fakemethod"], useWorker=True, waitForCompletion=False,
                            progressCallback=lambda f, m: progress.append(f),
                            completionCallback=lambda *a: done.append(a), show3D=True)
    assert running.status == "running" and logic.isRunning()
    with pytest.raises(RuntimeError, match="in progress"):
        logic.process(node, "some-model", ["x"], useWorker=True)
    deadline = time.monotonic() + 60
    while logic.poll() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logic.poll() == "done" and progress == [0.0, 0.5, 1.0]
    (status, nodes, error), = done
    assert status == "done" and error == "" and nodes[0].GetName() == "in fakemethod"
    result = nodes[0]
    assert np.array_equal(volumenodes.arrayFromNode(result), volumenodes.arrayFromNode(node))
    assert display.isSigned(result) and display.volumeRenderingDisplayNode(result).GetVisibility() == 1
    table = logic.regionTable(result)
    assert [r.name for r in regions.regionRowsFromTable(table)] == ["left", "right"]


def test_cancel_from_the_logic(logic):
    logic.popen = fake_popen
    node = volumenodes.addVolumeNode(logic.scene, np.ones((4, 4, 4), np.float32), "in")
    done, progress = [], []
    run = logic.process(node, "m", ["slow"], useWorker=True, waitForCompletion=False,
                        progressCallback=lambda f, m: progress.append(f), completionCallback=lambda *a: done.append(a))
    deadline = time.monotonic() + 30
    while not progress and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.05)
    folder = run.tempDir
    logic.cancel()
    assert run.status == "cancelled" and not logic.isRunning() and not folder.exists()
    assert done == [("cancelled", [], "cancelled")] and logic.resultNodes() == []


def test_region_results_and_centering(harness, logic):
    from xaiexplain.core.volume import Volume

    shape = (20, 22, 24)
    reference = volumenodes.addVolumeNode(logic.scene, np.zeros(shape, np.float32), "in",
                                          volume=Volume(np.zeros((1,) + shape), (2.0, 1.0, 3.0), (5, 6, 7)))
    result = volumenodes.addVolumeNode(logic.scene, np.ones(shape, np.float32), "map", reference=reference)
    display.markResult(result, method="occlusion-regions", signed=True, inputNode=reference)
    labels = np.zeros(shape, np.int16)
    labels[2:6, 2:6, 2:6] = 4
    labels[10:20, 12:20, 14:24] = 9
    rows = [{"id": 9, "name": "Frontal Pole", "volume_ml": 4.8, "score": 0.4, "rank": 1, "sum": 3.0},
            {"id": 4, "name": "Insular Cortex", "volume_ml": 0.38, "score": None, "rank": 2}]
    table, labelNode = addRegionResults(logic.scene, result, rows, Volume(labels[None], (2.0, 1.0, 3.0), (5, 6, 7)),
                                        prefix="map")
    assert labelNode.GetDisplayNode().GetColorNode().GetColorName(9) == "Frontal Pole"
    assert np.isnan(regions.regionRowsFromTable(table)[1].score)  # not scored: NaN, not a crash
    center = logic.centerOnRegion(result, 0)  # row 0: rank 1, the Frontal Pole
    expected = (volumenodes.ijkToRas(reference) @ np.array([14.5, 15.5, 18.5, 1.0]))[:3]
    assert np.allclose(center, expected)
    assert np.allclose(harness.sliceNode.GetSliceToRAS().MultiplyPoint((0, 0, 0, 1))[:3], expected)


def segmentation_of(scene, labels, reference, names):
    label_node = volumenodes.addVolumeNode(scene, labels, "tmp labels", reference=reference,
                                           className="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation)
    scene.RemoveNode(label_node)
    inner = segmentation.GetSegmentation()
    for i, name in enumerate(names):
        inner.GetSegment(inner.GetNthSegmentID(i)).SetName(name)
    return segmentation


def test_regions_from_a_segmentation_go_to_the_worker_with_their_names(logic):
    reference = volumenodes.addVolumeNode(logic.scene, np.zeros((20, 20, 20), np.float32), "in")
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:6, 2:6, 2:6], labels[10:15, 10:15, 10:15] = 1, 2
    segmentation = segmentation_of(logic.scene, labels, reference, ["Liver", "Left Kidney"])
    seen = {}

    def popen(command, **kwargs):
        seen["command"] = command
        seen["names"] = Path(command[command.index("--region-names") + 1]).read_text()
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(0)"], **kwargs)

    run = WorkerRunner(logic.scene, ExplainRequest([reference], "m", ["occlusion-regions"], regions=segmentation),
                       python="py", popen=popen).start()
    run.worker.wait(30)
    assert seen["names"].splitlines() == ["id,name", "1,Liver", "2,Left Kidney"]
    exported = run.case.regionLabels
    assert exported.IsA("vtkMRMLLabelMapVolumeNode") and volumenodes.sameGrid(exported, reference)
    assert np.array_equal(volumenodes.arrayFromNode(exported)[0], labels)
    run.cancel()


def test_region_table_goes_to_slicers_table_view(harness, logic):
    layout = logic.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is None:
        layout = logic.scene.AddNode(slicer.vtkMRMLLayoutNode())
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    logic.appLogic = harness.appLogic
    result = volumenodes.addVolumeNode(logic.scene, np.ones((5, 5, 5), np.float32), "map")
    display.markResult(result, method="occlusion-regions", signed=True)
    assert not logic.showRegionTable(result)  # no regions: nothing to show
    table, _ = addRegionResults(logic.scene, result, [(1, "a", 1.0, 0.5, 1)], prefix="map")
    assert logic.showRegionTable(result)
    assert harness.appLogic.GetSelectionNode().GetActiveTableID() == table.GetID()
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView


def test_in_process_regions_from_a_label_map(harness, logic, t1, demo, positive_case):
    """Region tables from the engine's region support (skipped by an engine without it)."""
    pytest.importorskip("xaiexplain.regions")
    from xaiexplain.synthlesion.synth import region_names

    labels = volumenodes.addVolumeNode(logic.scene, positive_case.labels.array[0], "atlas", volume=positive_case.labels,
                                       className="vtkMRMLLabelMapVolumeNode")
    labels.CreateDefaultDisplayNodes()
    colours = regions.addRegionColorTable(logic.scene, region_names(), "atlas names")
    labels.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    logic._models[(logic.demoModelPath(), "cpu")] = demo
    (result,) = logic.process(t1, logic.demoModelPath(), ["gradcam"], target="lesion", regions=labels, device="cpu")
    table = logic.regionTable(result)
    rows = regions.regionRowsFromTable(table)
    assert len(rows) > 20 and [r.rank for r in rows[:3]] == [1, 2, 3]
    assert {r.name for r in rows} <= set(region_names().values())
    assert table.GetNodeReference(regions.LABELS_REFERENCE) is labels  # the user's map, colours untouched
    assert labels.GetDisplayNode().GetColorNode() is colours
    assert np.allclose(logic.centerOnRegion(result, 0), regions.regionCenter(labels, rows[0].id))


def test_sample_data(logic, positive_case):
    brain, lesion = logic.loadSampleData()
    assert brain.GetName() == "SynthLesion" and lesion.IsA("vtkMRMLLabelMapVolumeNode")
    assert volumenodes.sameGrid(brain, lesion, tolerance=1e-9)
    mask = volumenodes.arrayFromNode(lesion)[0]
    assert mask.max() == 1 and 20 < mask.sum() < 5000
    assert lesion.GetDisplayNode().GetColorNode().GetColorName(1) == "lesion"
    assert volumenodes.arrayFromNode(brain)[0][mask > 0].mean() > volumenodes.arrayFromNode(brain)[0].mean()


def test_a_real_case_rendered_by_slicer(harness, logic, demo):
    """SynthLesion + the demo classifier's Grad-CAM: the overlay's hot spot is on the lesion, in 2D and 3D."""
    out = Path(os.environ.get("XAIEXPLAIN_SCREENSHOTS") or harness.scene.GetRootDirectory() or ".")
    keep = bool(os.environ.get("XAIEXPLAIN_SCREENSHOTS"))
    brain, lesion = logic.loadSampleData()
    logic._models[(logic.demoModelPath(), "cpu")] = demo
    (result,) = logic.process(brain, logic.demoModelPath(), "gradcam", target="lesion", device="cpu", show3D=True,
                              opacity=0.6)
    mask = volumenodes.arrayFromNode(lesion)[0] > 0
    center = (volumenodes.ijkToRas(brain) @ np.append(np.argwhere(mask).mean(0), 1.0))[:3]
    harness.fitSlice()
    harness.sliceNode.JumpSliceByOffsetting(*center)
    top = float(result.GetAttribute("XAIExplain.displayMax"))
    logic.setThreshold(result, 0.5 * top)  # the upper half of the map: where the evidence is
    legend = display.addLegend(result)
    with_legend = harness.renderSlice(out / "1.png" if keep else None)
    legend.SetVisibility(0)  # the legend's yellow end would count as "hot" below
    pixels = harness.renderSlice()
    legend.SetVisibility(1)
    drawn = np.argwhere(np.abs(with_legend.astype(int) - pixels.astype(int)).max(-1) > 30)
    assert len(drawn) > 200 and drawn[:, 1].min() > 0.6 * pixels.shape[1]  # the legend: at the right edge
    # the overlay's hottest pixels (Inferno's yellow end: the greenest of the coloured ones) are on the lesion
    rgb = pixels.astype(int)
    coloured = (rgb.max(-1) - rgb.min(-1)) > 40
    assert 0.005 < coloured.mean() < 0.5
    green = np.where(coloured, rgb[..., 1], -1)
    hottest = np.argwhere(green >= np.percentile(green[coloured], 95))
    h = pixels.shape[0]
    points = np.array([harness.sliceXYToRAS(c, h - 1 - r) for r, c in hottest])
    assert np.linalg.norm(points.mean(0) - center) < 15.0, (points.mean(0), center)  # mm
    harness.lookFrom("anterior", center=center)
    view = harness.render3D(out / "2.png" if keep else None, parallelScale=110).astype(int)
    row, col = harness.worldToViewPixel(center)
    patch = view[max(row - 6, 0):row + 7, max(col - 6, 0):col + 7].reshape(-1, 3)
    assert (patch[:, 0] - patch[:, 2] > 40).mean() > 0.5  # warm heatmap in front of the lesion


# -- dependencies ------------------------------------------------------------------------------------

def fake_versions(installed: dict):
    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]
    return version


def test_requirements_file_matches_the_engine_dependencies():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    engine = {dependencies.requirementName(r).lower(): r for r in project["dependencies"]}
    shipped = {dependencies.requirementName(r).lower(): r for r in dependencies.readRequirements()}
    assert set(engine) - {"torch", "numpy", "simpleitk"} <= set(shipped)  # everything the engine needs
    assert not {"torch", "numpy", "simpleitk", "vtk"} & set(shipped)  # never Slicer's own packages
    assert all(">=" in r for r in shipped.values()) and not any("==" in r for r in shipped.values())


def test_missing_requirements_and_lower_bounds():
    version = fake_versions({"monai": "1.2.0", "scipy": "1.13.1", "nibabel": "5.2"})
    assert dependencies.missingRequirements(["monai>=1.3", "scipy>=1.10", "nibabel>=4", "tqdm>=4.60"], version) == \
        ["monai>=1.3", "tqdm>=4.60"]


def test_install_uses_pip_ensure_with_slicers_packages_pinned():
    calls = []
    fake = SimpleNamespace(packaging=SimpleNamespace(
        pip_ensure=lambda reqs, constraints, requester: calls.append((reqs, Path(constraints).read_text(), requester))
        or True))
    version = fake_versions({"numpy": "2.2.1", "SimpleITK": "2.4.0", "vtk": "9.4.2"})
    assert dependencies.installRequirements(["monai>=1.3"], fake, version=version)
    (reqs, constraints, requester), = calls
    assert reqs == ["monai>=1.3"] and requester == "XAIExplain"
    assert constraints.split() == ["numpy==2.2.1", "SimpleITK==2.4.0", "vtk==9.4.2"]
    with pytest.raises(ValueError, match="numpy"):
        dependencies.installRequirements(["numpy>=2"], fake, version=version)
    with pytest.raises(ValueError, match="torch"):
        dependencies.installRequirements(["torch>=2"], fake, version=version)


def test_install_before_slicer_5_12_asks_first():
    installed = []
    fake = SimpleNamespace(util=SimpleNamespace(pip_install=installed.append))
    asked = []
    assert not dependencies.installRequirements(["monai>=1.3"], fake, confirm=lambda m: asked.append(m) or False)
    assert asked and "monai>=1.3" in asked[0] and installed == []
    assert dependencies.installRequirements(["monai>=1.3", "tqdm>=4.60"], fake, confirm=lambda m: True)
    (args,) = installed
    assert args.startswith('"monai>=1.3" "tqdm>=4.60" -c ') and "constraints.txt" in args
