"""What to explain: one request, its scene nodes in the form the engine takes, and its engine command line.

Both runners start from the same :class:`ExplainRequest`: :meth:`ExplainRequest.exportNodes`
turns its ROI and regions into label maps on the first input's grid (once, for both),
the in-process runner hands them to ``explain()`` as volumes, and the worker writes
them to files and runs :meth:`ExplainRequest.engineArguments`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import regions

ATLASES = ("harvard-oxford",)


@dataclass
class ExplainRequest:
    """What to explain, with the engine's parameter names. ``inputs``: volume nodes, one per channel."""

    inputs: list
    model: str
    methods: list[str]
    target: str | int | None = None
    versus: str | int | None = None
    roi: object = None  # label map / segmentation node, "predicted" or "component:N"
    layer: str | None = None
    params: dict = field(default_factory=dict)  # {method: {name: value}}
    seed: int = 0
    device: str = "auto"
    regions: object = None  # "harvard-oxford", or a label map (named colours) or segmentation node
    roiSegment: str | None = None  # of a segmentation ROI: this segment (ID or name) alone, else its visible ones
    inferer: dict | None = None  # sliding windows (the engine's names: roi_size, overlap, mode, sw_batch_size);
    # {}: none, even where the model has its own
    checks: object = None  # the trust card: True (every check) or check names; None: no card
    checkSettings: dict = field(default_factory=dict)  # {check: {name: value}}
    checkNode: object = None  # a result node whose map is re-made for its card (the card goes to it, no new node)

    def validate(self) -> None:
        if not self.inputs or any(node is None for node in self.inputs):
            raise ValueError("select an input volume")
        if not self.model:
            raise ValueError("select a model (a MONAI bundle folder, a TorchScript or .pt2 file, or the demo model)")
        if not self.methods:
            raise ValueError("select at least one method")
        infererArguments(self.inferer)  # settings both runners take, or the same refusal in both
        if self.checkSettings and not self.checks:
            raise ValueError("check settings were given without checks: ask for the checks too")

    def describe(self) -> dict:
        """What re-makes this request for a result (saved on its node; the nodes by reference): JSON."""
        return {"model": self.model, "methods": list(self.methods), "target": self.target, "versus": self.versus,
                "layer": self.layer, "params": self.params, "seed": self.seed, "device": self.device,
                "roi": self.roi if isinstance(self.roi, str) else None, "roiSegment": self.roiSegment,
                "regions": self.regions if self.regions in ATLASES else None, "inferer": self.inferer}

    def channelNames(self) -> list[str]:
        """The input channels' names, the same in both runners (the worker's input files are named so)."""
        return [f"input{i}" for i in range(len(self.inputs))]

    def exportNodes(self, scene) -> "CaseNodes":
        """The ROI and regions as label maps on the first input's grid (segmentations exported)."""
        reference = self.inputs[0]
        case = CaseNodes(list(self.inputs))
        try:
            if isinstance(self.roi, str):  # "predicted" or "component:N": resolved by the engine from the output
                case.roi = self.roi
            elif self.roi is not None:
                case.roi, temporary = roiLabelMap(scene, self.roi, reference, self.roiSegment)
                if temporary:
                    case.temporary.append(case.roi)
            if self.regions in ATLASES:
                case.regions = self.regions
            elif self.regions is not None:
                case.regions = regions.regionLabelMap(scene, self.regions, reference)  # kept: shown with the table
                case.regionNames = regions.colorNames(case.regions)
                if not case.regionNames:
                    raise ValueError(f"label map '{case.regions.GetName()}' has no colour table naming its regions")
        except Exception:
            case.removeTemporary(scene)
            raise
        return case

    def engineArguments(self, files: "EngineFiles") -> list[str]:
        """``xaiexplain explain ...`` for the files a runner wrote: machine-readable progress, no PNG previews."""
        args = ["explain", "--model", str(self.model)]
        for path in files.inputs:
            args += ["--input", str(path)]
        for method in self.methods:
            args += ["--method", method]
        for flag, value in (("--target", self.target), ("--versus", self.versus), ("--layer", self.layer)):
            if value not in (None, ""):
                args += [flag, str(value)]
        if files.roi is not None:
            args += ["--roi", str(files.roi)]
        args += infererArguments(self.inferer)
        for method, values in (self.params or {}).items():
            for name, value in values.items():
                args += ["--param", f"{method}.{name}={json.dumps(value)}"]
        if files.regions in ATLASES:
            args += ["--atlas", files.regions]
        elif files.regions is not None:
            args += ["--regions", str(files.regions), "--region-names", str(files.regionNames)]
        if self.checks:
            args += ["--check"] + ([] if self.checks is True else list(self.checks))
            for check, values in (self.checkSettings or {}).items():
                args += [item for name, value in values.items()
                         for item in ("--check-setting", f"{check}.{name}={json.dumps(value)}")]
        return args + ["--seed", str(int(self.seed)), "--device", self.device or "auto", "--out", str(files.out),
                       "--progress-lines", "--no-previews"]


@dataclass
class CaseNodes:
    """A request's nodes as the engine takes them: label maps on the first input's grid."""

    inputs: list
    roi: object = None  # a label map node, "predicted" or None
    regions: object = None  # a named label map node, an atlas name or None
    regionNames: dict | None = None  # {label: name} of a label map's regions
    temporary: list = field(default_factory=list)  # made for this run only (a segmentation's ROI mask)

    @property
    def regionLabels(self):
        """The label map node the regions came from (linked to the region tables), None for an atlas."""
        return self.regions if hasattr(self.regions, "IsA") else None

    def removeTemporary(self, scene) -> None:
        for node in self.temporary:
            if node.GetScene() is not None:
                scene.RemoveNode(node)
        self.temporary = []


@dataclass
class EngineFiles:
    """The files a worker wrote for the engine, and where the engine writes its results."""

    inputs: list[Path]
    out: Path
    roi: object = None  # a mask file or "predicted"
    regions: object = None  # a label file or an atlas name
    regionNames: Path | None = None  # ``id,name`` CSV of the label file


def infererArguments(inferer: dict | None) -> list[str]:
    """The engine's command-line flags for a request's sliding-window settings."""
    if inferer is None:
        return []
    if not inferer:
        return ["--no-window"]
    flags = {"roi_size": "--window", "overlap": "--overlap", "mode": "--blend", "sw_batch_size": "--window-batch"}
    unknown = sorted(set(inferer) - set(flags))
    if unknown:
        raise ValueError(f"sliding-window settings {unknown} cannot be given from Slicer: use {', '.join(flags)} "
                         "(the others are the model's own)")
    args = []
    for key, flag in flags.items():
        if key in inferer:
            value = inferer[key]
            if key == "roi_size" and not isinstance(value, (list, tuple)):
                value = [value] * 3  # a cube
            args += [flag, *map(str, value)] if isinstance(value, (list, tuple)) else [flag, str(value)]
    return args


def segmentId(segmentation, segment: str) -> str:
    """The ID of ``segment`` (an ID or a name) in a segmentation node, or a clear error naming the segments."""
    inner = segmentation.GetSegmentation()
    if inner.GetSegment(segment) is not None:
        return segment
    found = inner.GetSegmentIdBySegmentName(segment)
    if found:
        return found
    names = [inner.GetNthSegment(i).GetName() for i in range(inner.GetNumberOfSegments())]
    raise ValueError(f"segmentation '{segmentation.GetName()}' has no segment '{segment}' (it has: {', '.join(names)})")


def roiLabelMap(scene, roi, reference, segment: str | None = None):
    """A label map node for ``roi`` and whether it was made here: itself, or a segmentation (its ``segment``
    alone, else its visible segments) exported on the grid."""
    if roi.IsA("vtkMRMLLabelMapVolumeNode") or roi.IsA("vtkMRMLScalarVolumeNode"):
        if segment:
            raise ValueError(f"a segment was chosen, but the ROI '{roi.GetName()}' is a label map, not a segmentation")
        return roi, False
    import slicer
    import vtk

    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "XAIExplain ROI")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if segment:
        ids = vtk.vtkStringArray()
        try:
            ids.InsertNextValue(segmentId(roi, segment))
        except ValueError:
            scene.RemoveNode(labels)
            raise
        done = logic.ExportSegmentsToLabelmapNode(roi, ids, labels, reference)
    else:
        done = logic.ExportVisibleSegmentsToLabelmapNode(roi, labels, reference)
    if not done:
        scene.RemoveNode(labels)
        raise ValueError(f"cannot turn segmentation '{roi.GetName()}' into a mask on the input grid")
    return labels, True
