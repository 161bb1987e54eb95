"""The engine's attributions as result nodes: the one place both runners' results enter the scene.

Each map becomes a volume node on the first input's exact grid (same IJK-to-RAS, same
parent transform), tagged with the engine's record and its warnings; region tables become table nodes
linked to a label map of the regions (the user's own, or one made from the engine's labels).
"""
from __future__ import annotations

import numpy as np

from . import display, regions
from .volumenodes import addVolumeNode, ijkToRas

GRID_TOLERANCE = 1e-3  # mm: a map further off its input's grid is refused, not silently moved


def addResultNodes(scene, attributions, request, *, regionLabels=None) -> list:
    """One result node per attribution (in order), named '<input> <method>', with its region table if any.

    ``regionLabels``: the label map node the regions came from (the request's own), linked to the
    tables; None: a label map is made from the attributions' region labels (an atlas in the subject).
    """
    from xaiexplain.core.result import warning_text  # the engine is there: it made the attributions

    reference = request.inputs[0]
    prefix = reference.GetName()
    dims = reference.GetImageData().GetDimensions()
    for attribution in attributions:  # all checked before any node is added
        grid = attribution.map
        if tuple(grid.shape) != tuple(dims) or not np.allclose(grid.ijk_to_ras(), ijkToRas(reference),
                                                               atol=GRID_TOLERANCE):
            raise RuntimeError(f"the {attribution.method} map came back on another grid than '{prefix}'")
    nodes, madeLabels = [], {}
    for attribution in attributions:
        node = addVolumeNode(scene, attribution.array.astype(np.float32, copy=False), f"{prefix} {attribution.method}",
                             reference=reference)
        display.markResult(node, method=attribution.method, signed=attribution.signed, inputNode=reference,
                           record=attribution.to_dict())
        display.markWarnings(node, [warning_text(w) for w in attribution.warnings])
        if attribution.regions:
            labels = regionLabels
            if labels is None and attribution.region_labels is not None:
                key = id(attribution.region_labels)  # the attributions of one run share their labels
                if key not in madeLabels:
                    names = {row.id: row.name for row in regions.asRows(attribution.regions)}
                    madeLabels[key] = regions.addRegionLabelMap(scene, attribution.region_labels, names, reference,
                                                                f"{prefix} regions labels")
                labels = madeLabels[key]
            addRegionResults(scene, node, attribution.regions, labels, prefix=node.GetName())
        nodes.append(node)
    return nodes


def addRegionResults(scene, resultNode, rows, labels=None, names=None, *, prefix: str = ""):
    """Table (and label map colours) for one result's regions, linked to the result node."""
    rows = regions.asRows(rows)
    names = names or {r.id: r.name for r in rows}
    table = regions.addRegionTable(scene, rows, f"{prefix} regions".strip())
    if labels is not None and not hasattr(labels, "IsA"):  # an engine Volume: becomes a label map node
        labels = regions.addRegionLabelMap(scene, labels, names,
                                           resultNode.GetNodeReference(display.INPUT_REFERENCE) or resultNode,
                                           f"{prefix} regions labels".strip())
    elif labels is not None and (labels.GetDisplayNode() is None or labels.GetDisplayNode().GetColorNode() is None):
        labels.CreateDefaultDisplayNodes()  # a user's map keeps its colours; one without gets the regions' names
        colours = regions.addRegionColorTable(scene, names, f"{prefix} region names")
        labels.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    regions.linkRegions(resultNode, table, labels)
    return table, labels


def predictionSegmentation(scene, labels: np.ndarray, reference, classNames: list[str], name: str):
    """A segmentation node of a predicted label volume (I, J, K) on ``reference``'s grid: one segment per class
    predicted somewhere (background, label 0, left out), named after the class."""
    import slicer

    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    if not present:
        raise ValueError("the model predicts no voxel of any class but the background on this input")
    names = {label: classNames[label] if label < len(classNames) else str(label) for label in present}
    labelNode = regions.addRegionLabelMap(scene, labels, names, reference, name=f"{name} labels")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    colours = labelNode.GetDisplayNode().GetColorNode()
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation):
            raise ValueError(f"cannot turn the prediction into segmentation '{name}'")
    finally:
        scene.RemoveNode(labelNode)
        if colours is not None:
            scene.RemoveNode(colours)
    inner = segmentation.GetSegmentation()
    for index in range(inner.GetNumberOfSegments()):  # one per label, in label order
        inner.GetNthSegment(index).SetName(names[present[index]])
    segmentation.SetAttribute("XAIExplain.prediction", "true")
    return segmentation
