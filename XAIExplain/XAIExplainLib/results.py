"""The engine's attributions as result nodes: the one place both runners' results enter the scene.

Each map becomes a volume node on the first input's exact grid (same IJK-to-RAS, same
parent transform), tagged with the engine's record and its warnings; region tables become table nodes
linked to a label map of the regions (the user's own, or one made from the engine's labels).
"""
from __future__ import annotations

import json

import numpy as np

from . import display, regions, trust
from .volumenodes import addVolumeNode, arrayFromNode, ijkToRas

CHANNELS_REFERENCE = "XAIExplainChannel"  # every input channel, in order (the first is also display.INPUT_REFERENCE)
ROI_REFERENCE = "XAIExplainROI"
REGION_SOURCE_REFERENCE = "XAIExplainRegionSource"
REPRODUCED_TOLERANCE = 1e-4  # of the map's largest magnitude: a map re-made for its card must come out the same

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
        markRequest(node, request)
        if attribution.trust is not None:
            trust.markTrust(scene, node, attribution.trust, attribution.shortcut_region)
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


def markRequest(node, request) -> None:
    """What re-makes the result (its card re-makes the map): the request's settings, its nodes by reference."""
    node.SetAttribute(display.PREFIX + "request", json.dumps(request.describe(), default=str))
    for index, channel in enumerate(request.inputs):
        node.SetNthNodeReferenceID(CHANNELS_REFERENCE, index, channel.GetID())
    if request.roi is not None and not isinstance(request.roi, str):
        node.SetNodeReferenceID(ROI_REFERENCE, request.roi.GetID())
    if request.regions is not None and not isinstance(request.regions, str):
        node.SetNodeReferenceID(REGION_SOURCE_REFERENCE, request.regions.GetID())


def requestSettings(node) -> dict:
    """The settings and nodes a result was made with, as ``ExplainRequest`` fields."""
    text = node.GetAttribute(display.PREFIX + "request")
    if not text:
        raise ValueError(f"'{node.GetName()}' does not say how it was made: explain again to check it")
    settings = json.loads(text)
    settings["inputs"] = [node.GetNthNodeReference(CHANNELS_REFERENCE, i)
                          for i in range(node.GetNumberOfNodeReferences(CHANNELS_REFERENCE))]
    if None in settings["inputs"] or not settings["inputs"]:
        raise ValueError(f"the input volume(s) of '{node.GetName()}' are no longer in the scene")
    settings["roi"] = node.GetNodeReference(ROI_REFERENCE) or settings.get("roi")
    settings["regions"] = node.GetNodeReference(REGION_SOURCE_REFERENCE) or settings.get("regions")
    return settings


def addCard(scene, node, attribution) -> None:
    """The card of a map re-made for it goes to the result shown, with a check that the re-made map is that one."""
    shown = arrayFromNode(node)[0].astype(np.float64)
    remade = np.asarray(attribution.array, np.float64)
    scale = max(float(np.abs(shown).max()), 1e-30)
    difference = float(np.abs(shown - remade).max()) / scale if shown.shape == remade.shape else float("inf")
    same = difference <= REPRODUCED_TOLERANCE
    card = attribution.to_dict()["trust"]  # the JSON form: a copy
    card["checks"].append({
        "check": "reproduced", "title": "The checked map is the one shown", "verdict": "pass" if same else "fail",
        "text": (f"the map re-made for the checks equals the one shown (largest difference {difference:.1e} of its "
                 f"peak)" if same else f"the map re-made for the checks differs from the one shown (by {difference:.2g}"
                 " of its peak): the card is of the re-made map; the shown one cannot be reproduced"),
        "difference": difference, "passes": {"forward": 0, "backward": 0},
        "stated_passes": {"forward": 0, "backward": 0}, "settings": {}, "seconds": 0.0})
    if not same:
        card["verdict"], card["text"] = "fail", "do not trust this map as it is: it cannot be reproduced"
    trust.markTrust(scene, node, card, attribution.shortcut_region)


def attributionFromNode(node):
    """A result node as the engine's Attribution (its map, record, card and region table): for reports."""
    from xaiexplain.core.result import Attribution

    from .volumenodes import volumeFromNode

    record = display.record(node)
    table = node.GetNodeReference(regions.REGIONS_REFERENCE)
    rows = None if table is None else [vars(row) for row in regions.regionRowsFromTable(table)]
    return Attribution(map=volumeFromNode(node), method=record["method"], signed=bool(record["signed"]),
                       params=record.get("params", {}), target=record.get("target", {}),
                       prediction=record.get("prediction", {}), timings=record.get("timings", {}),
                       versions=record.get("versions", {}), seed=int(record.get("seed", 0)),
                       model=record.get("model", {}), info=dict(record.get("info") or {},
                                                               warnings=record.get("warnings") or []),
                       notes=record.get("notes", []), regions=rows, trust=trust.trustCard(node))


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


def labelSegmentation(scene, labels: np.ndarray, reference, classNames: list[str], name: str):
    """A segmentation node of a label volume (I, J, K) on ``reference``'s grid (a prediction, a suspect region):
    one segment per label present (label 0, the background, left out), named ``classNames[label]``."""
    import slicer

    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    if not present:
        raise ValueError(f"'{name}' has no voxel of any label but the background")
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
    return segmentation
