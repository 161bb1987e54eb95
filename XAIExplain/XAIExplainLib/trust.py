"""A result's trust card in MRML: node attributes, deletion/insertion curves as a plot chart, the shortcut
check's region as a segmentation.

The card (the engine's ``trust.trust_card``) is stored whole as JSON on the result node, with its verdict
and each check's verdict as attributes of their own (``XAIExplain.trust.<check>``), so a saved scene keeps
them and a script can read them without parsing. The curves are a ``vtkMRMLPlotChartNode`` with one series
per curve (the map's, solid; its random twins', dashed) over one table node per curve kind, what Slicer's
plot views show; :func:`renderPlotChart` draws the same chart with VTK's charts offscreen.
"""
from __future__ import annotations

import json

import numpy as np

from .display import PREFIX

TRUST = PREFIX + "trust"
CURVES_REFERENCE = "XAIExplainCurves"
SHORTCUT_REFERENCE = "XAIExplainShortcut"
CURVE_CHECKS = ("deletion", "insertion")
COLOURS = {"deletion": (0.8, 0.15, 0.1), "insertion": (0.1, 0.35, 0.8)}
RANDOM_GREY = (0.55, 0.55, 0.55)


def markTrust(scene, node, card: dict, shortcutRegion=None):
    """Store ``card`` on the result ``node``; add its curves chart and (if given, an engine Volume or an
    (I, J, K) label array) the shortcut check's offending region as a segmentation. Returns the chart node."""
    node.SetAttribute(TRUST, json.dumps(card))
    node.SetAttribute(TRUST + ".verdict", card["verdict"])
    for check in card["checks"]:
        node.SetAttribute(f"{TRUST}.{check['check']}", check["verdict"])
    chart = addCurvesChart(scene, node, card)
    if shortcutRegion is not None:
        addShortcutSegmentation(scene, node, shortcutRegion)
    return chart


def trustCard(node) -> dict | None:
    """The card stored on a result node; None if its map was never checked."""
    text = node.GetAttribute(TRUST) if node is not None else None
    return json.loads(text) if text else None


def describeTrust(node) -> str:
    """The card in a few lines for the results list: the verdict, then each check's verdict and words."""
    card = trustCard(node)
    if card is None:
        return "Not checked yet: Check this map runs the trust card."
    lines = [f"Trust card: {card['verdict'].upper()} ({card['text']})"]
    lines += [f"  {c['verdict']}: {c['title']}: {c['text']}" for c in card["checks"]]
    return "\n".join(lines)


def _curveTable(scene, name: str, check: dict):
    import vtk

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    columns = [("fraction", check["fractions"]), ("map", check["scores"])]
    columns += [(f"random {n + 1}", scores) for n, scores in enumerate(check.get("random_scores") or [])]
    for title, values in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(title)
        for value in values:
            array.InsertNextValue(float(value))
        table.AddColumn(array)
    table.SetLocked(True)
    return table, [title for title, _ in columns[1:]]


def addCurvesChart(scene, node, card: dict):
    """A plot chart of the card's deletion and insertion curves (None if it has neither), linked to ``node``."""
    import slicer

    checks = [c for c in card["checks"] if c["check"] in CURVE_CHECKS and c.get("scores")]
    if not checks:
        return None
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{node.GetName()} curves"))
    chart.SetTitle(f"{node.GetAttribute(PREFIX + 'method')}: deletion and insertion against random maps")
    chart.SetXAxisTitle("fraction of voxels changed")
    chart.SetYAxisTitle(checks[0].get("output", "score"))
    chart.SetLegendVisibility(True)
    for check in checks:
        table, columns = _curveTable(scene, f"{node.GetName()} {check['check']}", check)
        for column in columns:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode",
                                             scene.GenerateUniqueName(f"{check['check']} {column}"))
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("fraction")
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            if column == "map":
                series.SetColor(*COLOURS[check["check"]])
                series.SetLineWidth(3)
            else:
                series.SetColor(*RANDOM_GREY)
                series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    node.SetNodeReferenceID(CURVES_REFERENCE, chart.GetID())
    return chart


def curvesChart(node):
    return node.GetNodeReference(CURVES_REFERENCE) if node is not None else None


def renderPlotChart(chart, size=(640, 420)) -> np.ndarray:
    """The chart's series drawn with VTK's charts offscreen, as an (H, W, 3) uint8 image."""
    import vtk

    view = vtk.vtkContextView()
    window = view.GetRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    view.GetRenderer().SetBackground(1.0, 1.0, 1.0)
    xy = vtk.vtkChartXY()
    view.GetScene().AddItem(xy)
    xy.SetTitle(chart.GetTitle() or "")
    xy.SetShowLegend(bool(chart.GetLegendVisibility()))
    xy.GetAxis(vtk.vtkAxis.BOTTOM).SetTitle(chart.GetXAxisTitle() or "")
    xy.GetAxis(vtk.vtkAxis.LEFT).SetTitle(chart.GetYAxisTitle() or "")
    for index in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(index)
        table = series.GetTableNode().GetTable()
        line = xy.AddPlot(vtk.vtkChart.LINE)
        line.SetInputData(table, series.GetXColumnName(), series.GetYColumnName())
        line.SetLabel(series.GetName())
        r, g, b = series.GetColor()
        line.SetColor(int(255 * r), int(255 * g), int(255 * b), 255)
        line.SetWidth(float(series.GetLineWidth()))
        if series.GetLineStyle() == series.LineStyleDash:
            line.GetPen().SetLineType(vtk.vtkPen.DASH_LINE)
    window.Render()
    pixels = windowPixels(window)
    window.Finalize()
    return pixels


def windowPixels(window) -> np.ndarray:
    """What a render window shows, as an (H, W, 3) uint8 image, first row at the top (like a PNG)."""
    import vtk
    from vtk.util import numpy_support

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
    return np.ascontiguousarray(pixels[::-1])


def addShortcutSegmentation(scene, node, region):
    """The shortcut check's offending region (labels on the result's grid) as a segmentation linked to ``node``,
    one segment per kind of area (outside the body, image border, bright object)."""
    from xaiexplain.protocol import SHORTCUT_LABELS as LABELS  # torch-free

    from .results import labelSegmentation

    labels = region.array[0] if hasattr(region, "array") else np.asarray(region)
    names = [""] + [LABELS[k] for k in sorted(LABELS)]
    segmentation = labelSegmentation(scene, labels, node, names, f"{node.GetName()} shortcut region")
    segmentation.SetAttribute(PREFIX + "shortcut", "true")
    node.SetNodeReferenceID(SHORTCUT_REFERENCE, segmentation.GetID())
    return segmentation


def shortcutSegmentation(node):
    return node.GetNodeReference(SHORTCUT_REFERENCE) if node is not None else None
