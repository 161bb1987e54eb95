"""How a result looks: colour table, window/level, threshold, slice-view overlay, volume rendering, legend.

Every setting lives in MRML nodes (display, composite, volume-property nodes and
attributes on the result node), so it is adjustable after the run, saved with the
scene, and the same in Slicer and in the headless tests.
"""
from __future__ import annotations

import json

import numpy as np
import vtk

from . import colormaps
from .volumenodes import arrayFromNode

PREFIX = "XAIExplain."
INPUT_REFERENCE = "XAIExplainInput"
DEFAULT_OPACITY = 0.6
DEFAULT_THRESHOLD_FRACTION = 0.2  # of the display maximum
VOLUME_RENDERING_MAX_OPACITY = 0.8


def isResult(node) -> bool:
    return node is not None and node.GetAttribute(PREFIX + "method") is not None


def isSigned(node) -> bool:
    return node.GetAttribute(PREFIX + "signed") == "1"


def displayMaximum(array: np.ndarray) -> float:
    """The magnitude that maps to the end of the colour ramp: the 99.9th percentile of |map|.

    A few extreme voxels (gradient maps have them) would otherwise leave the rest of the map dark.
    """
    magnitude = np.abs(np.asarray(array, dtype=np.float64))
    top = float(np.percentile(magnitude, 99.9))
    return top if top > 0 else float(magnitude.max()) or 1.0


def markResult(node, *, method: str, signed: bool, inputNode=None, record: dict | None = None) -> None:
    """Tag a volume node as an XAIExplain result; the tags are saved with the scene."""
    node.SetAttribute(PREFIX + "method", method)
    node.SetAttribute(PREFIX + "signed", "1" if signed else "0")
    node.SetAttribute(PREFIX + "displayMax", f"{displayMaximum(arrayFromNode(node)):.9g}")
    if record is not None:
        node.SetAttribute(PREFIX + "record", json.dumps(record))
    if inputNode is not None:
        node.SetNodeReferenceID(INPUT_REFERENCE, inputNode.GetID())


def markWarnings(node, texts) -> None:
    """The engine's warnings about the map (what is wrong, and the fix), one a line, as the node's attribute."""
    if texts:
        node.SetAttribute(PREFIX + "warnings", "\n".join(texts))


def warnings(node) -> list[str]:
    """The result's warnings (see :func:`markWarnings`); none: []."""
    text = node.GetAttribute(PREFIX + "warnings") if node is not None else None
    return text.split("\n") if text else []


def record(node) -> dict:
    """The engine's record of how the map was made (method, target, prediction, parameters, timings)."""
    text = node.GetAttribute(PREFIX + "record")
    return json.loads(text) if text else {}


def threshold(node) -> float:
    return float(node.GetAttribute(PREFIX + "threshold") or 0.0)


def colorNodeFor(scene, node):
    if isSigned(node):
        return colormaps.divergingColorNode(scene, f"{node.GetName()} colours", 0.0)
    from xaiexplain.protocol import PREDICTION_MAPS  # torch-free: the engine's one list of them

    if node.GetAttribute(PREFIX + "method") in PREDICTION_MAPS:  # not evidence: its own colours
        return colormaps.viridisColorNode(scene)
    return colormaps.infernoColorNode(scene)


def setupDisplay(scene, node, *, thresholdValue: float | None = None, legend: bool = True):
    """Display node with the heatmap colours, window/level over the map's range and the threshold."""
    top = float(node.GetAttribute(PREFIX + "displayMax"))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    colours = colorNodeFor(scene, node)
    display.SetAndObserveColorNodeID(colours.GetID())
    display.SetAutoWindowLevel(0)
    display.SetAutoThreshold(0)
    display.SetInterpolate(1)
    if isSigned(node):
        display.SetWindowLevelMinMax(-top, top)
    else:
        display.SetWindowLevelMinMax(0.0, top)
    setThreshold(scene, node, DEFAULT_THRESHOLD_FRACTION * top if thresholdValue is None else thresholdValue)
    if legend:
        addLegend(node)
    return display


def setThreshold(scene, node, value: float) -> None:
    """Voxels whose magnitude is under ``value`` are not drawn (slice views and 3D)."""
    value = max(0.0, float(value))
    node.SetAttribute(PREFIX + "threshold", f"{value:.9g}")
    display = node.GetDisplayNode()
    top = float(node.GetAttribute(PREFIX + "displayMax"))
    if isSigned(node):
        # Both signs must be cut: a display-node threshold is one interval, so the cut lives in the colours.
        colormaps.setTransparentCentre(colorNodeFor(scene, node), value / top)
        display.SetApplyThreshold(0)
    else:
        display.SetApplyThreshold(1)
        highest = node.GetImageData().GetScalarRange()[1]
        display.SetThreshold(value, max(top, highest) * 2 + 1)  # no upper cut
    vr = volumeRenderingDisplayNode(node)
    if vr is not None:
        updateTransferFunctions(node, vr)


def addLegend(node):
    """A colour legend (bar) with the method's name, shown in slice and 3D views."""
    import slicer

    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText(node.GetAttribute(PREFIX + "method") or node.GetName())
        legend.SetLabelFormat("%.3g")  # attribution values are often far below 1
        legend.SetVisibility(1)
        legend.Modified()  # re-evaluated now that the map is in the views
    return legend


def showInSliceViews(scene, node, *, background=None, opacity: float = DEFAULT_OPACITY) -> None:
    """The map as foreground of every slice view, over ``background`` (default: the map's input)."""
    if background is None:
        background = node.GetNodeReference(INPUT_REFERENCE)
    node.SetAttribute(PREFIX + "opacity", f"{opacity:.6g}")
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(node.GetID())
        composite.SetForegroundOpacity(float(opacity))


def setOpacity(scene, node, opacity: float) -> None:
    """Foreground opacity in the slice views that show ``node``."""
    node.SetAttribute(PREFIX + "opacity", f"{opacity:.6g}")
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if composite.GetForegroundVolumeID() == node.GetID():
            composite.SetForegroundOpacity(float(opacity))


def volumeRenderingDisplayNode(node):
    for i in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(i)
        if display is not None and display.IsA("vtkMRMLVolumeRenderingDisplayNode"):
            return display
    return None


def showVolumeRendering(vrLogic, node, visible: bool = True):
    """Volume rendering of the map, coloured like the slices, transparent under the threshold.

    The map is float, so default nodes are created without the presets file (which the
    integer-volume path would need). Ray casting method: the logic's default (CPU in tests).
    """
    display = volumeRenderingDisplayNode(node)
    if display is None:
        if not visible:
            return None
        display = vrLogic.CreateDefaultVolumeRenderingNodes(node)
    updateTransferFunctions(node, display)
    display.SetVisibility(1 if visible else 0)
    return display


def updateTransferFunctions(node, display) -> None:
    top = float(node.GetAttribute(PREFIX + "displayMax"))
    cut = min(threshold(node), 0.999 * top)
    low = -top if isSigned(node) else 0.0
    lut = node.GetDisplayNode().GetColorNode().GetLookupTable()
    colours = vtk.vtkColorTransferFunction()
    n = lut.GetNumberOfTableValues()
    for i in range(n):
        r, g, b, _ = lut.GetTableValue(i)
        colours.AddRGBPoint(low + (top - low) * i / (n - 1), r, g, b)
    opacity = vtk.vtkPiecewiseFunction()
    peak = VOLUME_RENDERING_MAX_OPACITY
    if isSigned(node):
        opacity.AddPoint(-top, peak)
        opacity.AddPoint(-cut, 0.0)
        opacity.AddPoint(cut, 0.0)
    else:
        opacity.AddPoint(0.0, 0.0)
        opacity.AddPoint(cut, 0.0)
    opacity.AddPoint(top, peak)
    flat = vtk.vtkPiecewiseFunction()  # no gradient-opacity edge enhancement: a heatmap has no surfaces
    flat.AddPoint(0.0, 1.0)
    flat.AddPoint(1e6, 1.0)
    prop = display.GetVolumePropertyNode().GetVolumeProperty()
    prop.SetColor(colours)
    prop.SetScalarOpacity(opacity)
    prop.SetGradientOpacity(flat)
    prop.ShadeOff()
    prop.SetInterpolationTypeToLinear()


def showResult(scene, node, *, background=None, thresholdValue: float | None = None,
               opacity: float = DEFAULT_OPACITY, show3D: bool = False, vrLogic=None, legend: bool = True) -> None:
    """Everything at once: display node, foreground in all slice views, optional volume rendering."""
    setupDisplay(scene, node, thresholdValue=thresholdValue, legend=False)
    showInSliceViews(scene, node, background=background, opacity=opacity)
    if legend:  # after the layers: the legend shows where its volume is shown
        addLegend(node)
    if show3D:
        if vrLogic is None:
            raise ValueError("showing a result in 3D needs the volume rendering logic")
        showVolumeRendering(vrLogic, node, True)
    elif volumeRenderingDisplayNode(node) is not None:
        volumeRenderingDisplayNode(node).SetVisibility(0)
