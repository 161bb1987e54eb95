"""Trust in Slicer's own terms (slicer-core): a result's card as node attributes that survive a saved scene,
its curves as a plot chart that renders, the shortcut region as a segment, regions of several methods in one
table, a report from the scene, and the views' orientation kept when switching results."""
from __future__ import annotations

import numpy as np
import pytest

from xaiexplain.synthlesion.benchmark import MARKED_SEED_START
from xaiexplain.synthlesion.synth import generate_case, marker_mask

QUICK = {"deletion": {"steps": 6, "random_maps": 1}, "insertion": {"steps": 6, "random_maps": 1}}


@pytest.fixture()
def marked(logic):
    """A positive SynthLesion case carrying the planted marker, as a volume node."""
    from XAIExplainLib.volumenodes import addVolumeNode

    case = generate_case(MARKED_SEED_START, positive=True, marker=True)
    node = addVolumeNode(logic.scene, case.volume.array[0], "marked", volume=case.volume)
    return node


def _shortcutModel(logic):
    return logic.demoModelPath("synthlesion_shortcut")


def test_check_this_map_stores_the_card_on_the_result_and_it_survives_a_saved_scene(logic, marked, harness,
                                                                                     tmp_path):
    from XAIExplainLib import trust

    (result,) = logic.process(marked, _shortcutModel(logic), ["lrp"], target="lesion", device="cpu",
                              useWorker=False, show=False)
    assert logic.trustCard(result) is None and "Not checked yet" in logic.describeResult(result)
    nodes = logic.checkResult(result, ["randomisation", "deletion", "insertion", "shortcut"], QUICK, useWorker=False)
    assert nodes == [result] and len(logic.resultNodes()) == 1  # the card went onto the result: no new node
    card = logic.trustCard(result)
    verdicts = {c["check"]: c["verdict"] for c in card["checks"]}
    assert verdicts["shortcut"] == "fail" and verdicts["reproduced"] == "pass"  # the marker, and the same map
    assert card["verdict"] == "fail" and result.GetAttribute("XAIExplain.trust.shortcut") == "fail"
    assert result.GetAttribute("XAIExplain.trust.deletion") == verdicts["deletion"]
    assert "FAIL" in logic.describeResult(result)
    segmentation = trust.shortcutSegmentation(result)
    assert segmentation is not None
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert "bright object" in names  # the marker: bright, outside the body, on the border: named for the first
    harness.saveMRB(tmp_path / "checked.mrb")
    harness.loadMRB(tmp_path / "checked.mrb")
    (reloaded,) = logic.resultNodes()
    assert logic.trustCard(reloaded) == card
    assert reloaded.GetAttribute("XAIExplain.trust.verdict") == "fail"
    assert trust.curvesChart(reloaded) is not None and trust.shortcutSegmentation(reloaded) is not None


def test_the_curves_chart_renders_the_maps_curve_and_its_random_twins(logic, marked):
    from XAIExplainLib import trust

    (result,) = logic.process(marked, _shortcutModel(logic), ["gradient"], target="lesion", device="cpu",
                              useWorker=False, show=False, checks=["deletion", "insertion"], checkSettings=QUICK)
    chart = trust.curvesChart(result)
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 4  # map + random, twice
    series = chart.GetNthPlotSeriesNode(0)
    table = series.GetTableNode().GetTable()
    card = logic.trustCard(result)
    deletion = next(c for c in card["checks"] if c["check"] == "deletion")
    assert table.GetNumberOfRows() == len(deletion["scores"]) == 7
    assert np.isclose(table.GetValueByName(3, "map").ToDouble(), deletion["scores"][3])
    pixels = renderedChart = trust.renderPlotChart(chart)
    colours = renderedChart.reshape(-1, 3).astype(int)
    red = ((colours[:, 0] > 150) & (colours[:, 1] < 90) & (colours[:, 2] < 90)).sum()  # the deletion curve
    blue = ((colours[:, 2] > 150) & (colours[:, 0] < 90) & (colours[:, 1] < 140)).sum()  # the insertion curve
    assert red > 100 and blue > 100, (red, blue)
    assert pixels.shape == (420, 640, 3)
    empty = logic.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "empty")
    blank = trust.renderPlotChart(empty).reshape(-1, 3).astype(int)
    assert ((blank[:, 0] > 150) & (blank[:, 1] < 90) & (blank[:, 2] < 90)).sum() == 0  # no series: no red


def test_the_one_click_shortcut_check_flags_the_marker_and_clears_the_clean_model(logic, marked):
    from XAIExplainLib.volumenodes import arrayFromNode

    shortcutMap, = logic.process(marked, _shortcutModel(logic), ["integrated-gradients"], target="lesion",
                                 device="cpu", useWorker=False, show=False)
    flagged = logic.shortcutCheck(shortcutMap)
    assert flagged["verdict"] == "fail" and flagged["share"] >= 0.9
    region = flagged["segmentation"]
    labels = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "region")
    import slicer
    slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(region, labels, shortcutMap)
    exported = arrayFromNode(labels)[0] > 0
    marker = marker_mask().array[0] > 0
    assert exported.shape == marker.shape and (exported & marker).sum() >= 0.5 * marker.sum()
    cleanMap, = logic.process(marked, logic.demoModelPath(), ["integrated-gradients"], target="lesion",
                              device="cpu", useWorker=False, show=False)
    cleared = logic.shortcutCheck(cleanMap)
    assert cleared["verdict"] == "pass" and cleared["share"] < 0.1 and "segmentation" not in cleared


def test_region_tables_of_several_methods_side_by_side_and_a_report_from_the_scene(logic, marked, tmp_path):
    from XAIExplainLib.regions import regionRowsFromTable

    nodes = logic.process(marked, logic.demoModelPath(), ["gradient", "gradcam"], target="lesion", device="cpu",
                          regions="harvard-oxford", useWorker=False, show=False)
    table = logic.compareRegions(nodes)
    t = table.GetTable()
    titles = [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())]
    assert titles == ["region id", "region", "gradient score", "gradient rank", "gradcam score", "gradcam rank"]
    first = regionRowsFromTable(logic.regionTable(nodes[0]))
    second = {row.id: row for row in regionRowsFromTable(logic.regionTable(nodes[1]))}
    assert t.GetNumberOfRows() == len(first)
    for r in (0, 5):
        assert t.GetValueByName(r, "region").ToString() == first[r].name
        assert t.GetValueByName(r, "gradcam rank").ToInt() == second[first[r].id].rank
    written = logic.writeReport(tmp_path / "report", nodes)
    text = written[0].read_text(encoding="utf-8")
    assert 'id="input"' in text and 'id="map-gradient"' in text and 'id="regions"' in text
    assert text.count("data:image/png;base64,") == 2 and written[1].stat().st_size > 10_000


def test_switching_results_keeps_the_views_orientation(logic, marked, harness):
    nodes = logic.process(marked, logic.demoModelPath(), ["gradient", "gradcam"], target="lesion", device="cpu",
                          useWorker=False, show=False)
    slice_node = harness.sliceNode
    slice_node.SetOrientationToSagittal()
    slice_node.SetFieldOfView(120.0, 120.0, 1.0)
    slice_node.SetSliceOffset(7.0)
    before = [slice_node.GetSliceToRAS().GetElement(i, j) for i in range(4) for j in range(4)]
    for node in nodes + nodes[:1]:
        logic.showResult(node)
        after = [slice_node.GetSliceToRAS().GetElement(i, j) for i in range(4) for j in range(4)]
        assert np.allclose(before, after) and slice_node.GetOrientation() == "Sagittal"
        assert np.allclose(slice_node.GetFieldOfView()[:2], (120.0, 120.0))
    harness.sliceNode.SetOrientationToAxial()


def test_the_worker_gets_the_checks_on_its_command_line(logic, marked):
    from pathlib import Path

    from XAIExplainLib.request import EngineFiles, ExplainRequest

    request = ExplainRequest([marked], "model", ["lrp"], checks=["deletion", "shortcut"],
                             checkSettings={"deletion": {"steps": 5}})
    request.validate()
    files = EngineFiles(inputs=[Path("in.nrrd")], out=Path("out"))
    args = request.engineArguments(files)
    at = args.index("--check")
    assert args[at:at + 5] == ["--check", "deletion", "shortcut", "--check-setting", "deletion.steps=5"]
    with pytest.raises(ValueError, match="without checks"):
        ExplainRequest([marked], "model", ["lrp"], checkSettings={"deletion": {"steps": 5}}).validate()
