"""Segmentation targets from Slicer: the model's own prediction as a segmentation node, one of its segments as
the ROI, and sliding windows, in-process and in the worker's command line (real MRML, ``slicer-core``)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

slicer = pytest.importorskip("slicer")

from XAIExplainLib import display, volumenodes  # noqa: E402
from XAIExplainLib.request import ExplainRequest, infererArguments  # noqa: E402
from XAIExplainLib.runners import WorkerRunner  # noqa: E402

from xaiexplain import load_model  # noqa: E402
from xaiexplain.core.volume import Volume  # noqa: E402

SHAPE = (24, 20, 18)
CLASSES = ["background", "organ", "lesion"]


class Thresholds(nn.Module):
    """A voxelwise 'segmentation network': background below 0.3, organ up to 0.7, lesion above."""

    def forward(self, x):
        return torch.cat([(0.3 - x) * 10, -(x - 0.5).abs() * 10 + 2, (x - 0.7) * 10], 1)


@pytest.fixture()
def scan():
    array = np.full(SHAPE, 0.1, np.float32)
    array[4:12, 4:12, 4:12] = 0.5  # organ
    array[14:20, 10:16, 6:12] = 0.9  # lesion
    return Volume(array[None], spacing=(1.5, 1.0, 2.0), origin=(-10.0, 4.0, 3.0))


@pytest.fixture()
def seg_model(logic):
    model = load_model(Thresholds(), device="cpu", class_names=CLASSES, task="segmentation")
    logic._models[("thresholds", "cpu")] = model
    return model


def test_the_models_prediction_loads_as_a_segmentation_with_named_segments(logic, scan, seg_model):
    node = volumenodes.addVolumeNode(logic.scene, scan.array[0], "CT", volume=scan)
    segmentation = logic.loadPrediction(node, "thresholds", device="cpu")
    inner = segmentation.GetSegmentation()
    assert [inner.GetNthSegment(i).GetName() for i in range(inner.GetNumberOfSegments())] == ["organ", "lesion"]
    labels = slicer.vtkMRMLLabelMapVolumeNode()
    logic.scene.AddNode(labels)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(segmentation, labels, node)
    exported = volumenodes.arrayFromNode(labels)[0]
    expected = np.zeros(SHAPE, np.int16)
    expected[4:12, 4:12, 4:12], expected[14:20, 10:16, 6:12] = 1, 2
    assert np.array_equal(exported > 0, expected > 0)


def test_one_segment_of_the_prediction_is_the_roi_explained_through_sliding_windows(logic, scan, seg_model):
    node = volumenodes.addVolumeNode(logic.scene, scan.array[0], "CT", volume=scan)
    segmentation = logic.loadPrediction(node, "thresholds", device="cpu")
    (result,) = logic.process(node, "thresholds", ["gradient"], target="lesion", roi=segmentation,
                              roiSegment="lesion", inferer={"roi_size": [8, 8, 8], "overlap": 0.5}, device="cpu",
                              useWorker=False, show=False)
    record = display.record(result)
    assert record["target"]["region_voxels_model_space"] == 6 * 6 * 6  # the lesion segment alone
    assert record["info"]["sliding_window"]["roi_size"] == [8, 8, 8]
    grad = volumenodes.arrayFromNode(result)[0]
    # a voxelwise network: d(mean lesion logit over the lesion)/dx = 10/216 inside the segment, 0 elsewhere
    assert np.allclose(grad[14:20, 10:16, 6:12], 10 / 216, atol=1e-6)
    assert float(np.abs(grad).sum()) == pytest.approx(10.0, rel=1e-5)
    with pytest.raises(ValueError, match="no segment 'tumour' .*organ, lesion"):
        logic.process(node, "thresholds", ["gradient"], target="lesion", roi=segmentation, roiSegment="tumour",
                      device="cpu", useWorker=False, show=False)


def test_the_worker_gets_the_segment_and_the_windows_on_its_command_line(logic, scan):
    node = volumenodes.addVolumeNode(logic.scene, scan.array[0], "CT", volume=scan)
    labels = np.zeros(SHAPE, np.int16)
    labels[4:12, 4:12, 4:12], labels[14:20, 10:16, 6:12] = 1, 2
    from test_slicer_logic import segmentation_of

    segmentation = segmentation_of(logic.scene, labels, node, ["organ", "lesion"])
    seen = {}

    def popen(command, **kwargs):
        seen["command"] = command
        roi = command[command.index("--roi") + 1]
        seen["roi"] = volumenodes.arrayFromNode(volumenodes.readVolumeFile(logic.scene, roi, "roi"))[0]
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(0)"], **kwargs)

    request = ExplainRequest([node], "m", ["gradient"], target="organ", roi=segmentation, roiSegment="organ",
                             inferer={"roi_size": [8, 8, 8], "mode": "gaussian"})
    run = WorkerRunner(logic.scene, request, python="py", popen=popen).start()
    run.worker.wait(30)
    command = seen["command"]
    assert command[command.index("--window") + 1:command.index("--window") + 4] == ["8", "8", "8"]
    assert command[command.index("--blend") + 1] == "gaussian"
    assert np.array_equal(seen["roi"] > 0, labels == 1)  # the organ segment only
    run.cancel()
    assert infererArguments({}) == ["--no-window"] and infererArguments(None) == []
    with pytest.raises(ValueError, match="cannot be given from Slicer"):
        infererArguments({"stride": 4})


def test_the_panels_window_field(logic):
    assert logic.windowSettings("") is None and logic.windowSettings("none") == {}
    assert logic.windowSettings("96 96 64") == {"roi_size": [96, 96, 64]}
    assert logic.windowSettings("128") == {"roi_size": [128, 128, 128]}
    assert logic.windowSettings("96x96x96") == {"roi_size": [96, 96, 96]}
    for bad in ("96 96", "96 -1 96", "big"):
        with pytest.raises(ValueError, match="not a size in voxels"):
            logic.windowSettings(bad)
