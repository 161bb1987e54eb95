"""One explanation run in a worker process: files in a temporary folder, the engine CLI, results into nodes.

Inputs go out as NRRD files written by Slicer's own storage node (so the file's
geometry is exactly what Slicer shows), the engine writes ``<method>.nrrd`` and
``summary.json`` (plus ``regions.csv`` and a label volume for region methods),
and the maps come back as result nodes with the first input's grid. The
temporary folder is removed however the run ends.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import display, regions
from .volumenodes import copyGeometry, sameGrid
from .worker import WorkerProcess, pythonSlicerExecutable

ENGINE_PARENT = Path(__file__).resolve().parent.parent  # the folder that holds the xaiexplain package
LAUNCH_ENGINE = (f"import sys; sys.path.insert(0, {str(ENGINE_PARENT)!r}); "
                 "from xaiexplain.cli.main import main; sys.exit(main())")


@dataclass
class ExplainRequest:
    """What to explain, with the engine's parameter names. ``inputs``: volume nodes, one per channel."""

    inputs: list
    model: str
    methods: list[str]
    target: str | int | None = None
    versus: str | int | None = None
    roi: object = None  # label map / segmentation node, or "predicted"
    layer: str | None = None
    params: dict = field(default_factory=dict)  # {method: {name: value}}
    seed: int = 0
    device: str = "auto"
    regions: object = None  # "harvard-oxford", or a label map (named colours) or segmentation node

    def validate(self) -> None:
        if not self.inputs or any(node is None for node in self.inputs):
            raise ValueError("select an input volume")
        if not self.model:
            raise ValueError("select a model (a MONAI bundle folder, a TorchScript or .pt2 file, or the demo model)")
        if not self.methods:
            raise ValueError("select at least one method")


def writeVolumeFile(node, path) -> Path:
    """Write a volume (or label map) node to NRRD with Slicer's storage node; the node is not changed."""
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temporary file: speed over size
    if not storage.WriteData(node):
        raise RuntimeError(f"cannot write '{node.GetName()}' to {path}")
    return Path(path)


def readVolumeFile(scene, path, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    import slicer

    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if className == "vtkMRMLLabelMapVolumeNode":
        storage.SetCenterImage(0)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"cannot read {path}")
    return node


def roiLabelMap(scene, roi, reference):
    """A label map node for ``roi``: itself if it is one, else a segmentation exported on the input grid."""
    if roi.IsA("vtkMRMLLabelMapVolumeNode") or roi.IsA("vtkMRMLScalarVolumeNode"):
        return roi, False
    import slicer

    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "XAIExplain ROI")
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(roi, labels, reference):
        scene.RemoveNode(labels)
        raise ValueError(f"cannot turn segmentation '{roi.GetName()}' into a mask on the input grid")
    return labels, True


def regionNamesCsv(labelNode, path) -> Path:
    """The names of a label map's colour table as ``id,name`` lines (the engine's names file)."""
    names = regions.colorNames(labelNode)
    if not names:
        raise ValueError(f"label map '{labelNode.GetName()}' has no colour table naming its regions")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name"])
        writer.writerows(sorted(names.items()))
    return Path(path)


def engineCommand(python: str, inputFiles, request: ExplainRequest, outDir, *, roiFile=None,
                  regionFiles=None) -> list[str]:
    """The engine's ``explain`` command with machine-readable progress and no PNG previews.

    The engine is put on ``sys.path`` by the command itself: Slicer's launcher may rewrite PYTHONPATH.
    """
    command = [python, "-c", LAUNCH_ENGINE, "explain", "--model", str(request.model)]
    for path in inputFiles:
        command += ["--input", str(path)]
    for method in request.methods:
        command += ["--method", method]
    for flag, value in (("--target", request.target), ("--versus", request.versus), ("--layer", request.layer)):
        if value not in (None, ""):
            command += [flag, str(value)]
    if roiFile is not None:
        command += ["--roi", str(roiFile)]
    for method, values in (request.params or {}).items():
        for name, value in values.items():
            command += ["--param", f"{method}.{name}={json.dumps(value)}"]
    if regionFiles == "harvard-oxford":
        command += ["--atlas", "harvard-oxford"]
    elif regionFiles is not None:
        command += ["--regions", str(regionFiles[0]), "--region-names", str(regionFiles[1])]
    command += ["--seed", str(int(request.seed)), "--device", request.device or "auto", "--out", str(outDir),
                "--progress-lines", "--no-previews"]
    return command


def engineEnvironment(base: dict | None = None) -> dict:
    """The child's environment: the engine beside this package importable, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def loadResults(scene, folder, inputNode, *, prefix: str | None = None, regionLabels=None) -> list:
    """Result nodes from an engine output folder: one per map, on the input's grid, tagged and displayed.

    Region outputs (``regions.csv`` and a label volume), when present, become a table and a label map
    linked to the result.
    """
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    prefix = prefix or inputNode.GetName()
    nodes = []
    for item in summary["results"]:
        method = item["method"]
        node = readVolumeFile(scene, folder / f"{method}.nrrd", f"{prefix} {method}")
        if not sameGrid(node, inputNode, tolerance=1e-3):
            scene.RemoveNode(node)
            raise RuntimeError(f"the {method} map came back on another grid than '{inputNode.GetName()}'")
        copyGeometry(inputNode, node)  # exact matrix and same parent transform as the input
        display.markResult(node, method=method, signed=bool(item["signed"]), inputNode=inputNode, record=item)
        nodes.append(node)
    tableFile, labelFile = regions.findRegionFiles(folder)
    labels = regionLabels
    if labelFile is not None and labels is None:
        labels = readVolumeFile(scene, labelFile, f"{prefix} regions labels", "vtkMRMLLabelMapVolumeNode")
        copyGeometry(inputNode, labels)
        labels.CreateDefaultDisplayNodes()
        labels.GetDisplayNode().SetAndObserveColorNodeID("")  # named by the region table below
    for node, item in zip(nodes, summary["results"]):
        rows = item.get("regions")
        if rows is None and tableFile is not None:
            rows = regions.readRegionsCsv(tableFile, item["method"])
        if rows:
            addRegionResults(scene, node, rows, labels, prefix=f"{prefix} {item['method']}")
    return nodes


def addRegionResults(scene, resultNode, rows, labels=None, names=None, *, prefix: str = ""):
    """Table (and label map colours) for one result's regions, linked to the result node."""
    rows = regions.asRows(rows)
    table = regions.addRegionTable(scene, rows, f"{prefix} regions".strip())
    if labels is not None and not hasattr(labels, "IsA"):  # an engine Volume: becomes a label map node
        labels = regions.addRegionLabelMap(scene, labels, names or {r.id: r.name for r in rows},
                                           resultNode.GetNodeReference(display.INPUT_REFERENCE) or resultNode,
                                           f"{prefix} regions labels".strip())
    elif labels is not None and labels.GetDisplayNode().GetColorNode() is None:  # a user's label map keeps its colours
        colours = regions.addRegionColorTable(scene, names or {r.id: r.name for r in rows}, f"{prefix} region names")
        labels.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    regions.linkRegions(resultNode, table, labels)
    return table, labels


class ExplainJob:
    """An explanation computed by the engine CLI in a worker process.

    ``start()`` writes the inputs and launches; ``poll()`` (from a GUI timer) or ``wait()`` (console)
    report progress and, at the end, load the results; ``cancel()`` kills the worker. In every case
    the temporary folder is gone once the job has ended.
    """

    def __init__(self, scene, request: ExplainRequest, *, python: str | None = None, onProgress=None, onLog=None,
                 popen=None, tempRoot=None):
        request.validate()
        self.scene = scene
        self.request = request
        self.python = python or pythonSlicerExecutable()
        self.onProgress = onProgress
        self.onLog = onLog
        self.popen = popen
        self.tempRoot = tempRoot
        self.tempDir: Path | None = None
        self.worker: WorkerProcess | None = None
        self.resultNodes: list = []
        self.status = "new"  # new, running, done, failed, cancelled
        self.error = ""
        self.regionLabels = None  # the label map the regions came from (shown with the region table)
        self._temporaryNodes = []

    def start(self) -> "ExplainJob":
        self.tempDir = Path(tempfile.mkdtemp(prefix="xaiexplain-", dir=self.tempRoot))
        try:
            inputFiles = [writeVolumeFile(node, self.tempDir / f"input{i}.nrrd")
                          for i, node in enumerate(self.request.inputs)]
            roiFile = None
            roi = self.request.roi
            if roi is not None and roi != "predicted":
                labels, temporary = roiLabelMap(self.scene, roi, self.request.inputs[0])
                if temporary:
                    self._temporaryNodes.append(labels)
                roiFile = writeVolumeFile(labels, self.tempDir / "roi.nrrd")
            elif roi == "predicted":
                roiFile = "predicted"
            regionFiles = None
            if self.request.regions == "harvard-oxford":
                regionFiles = "harvard-oxford"
            elif self.request.regions is not None:
                labels = regions.regionLabelMap(self.scene, self.request.regions, self.request.inputs[0])
                self.regionLabels = labels
                regionFiles = (writeVolumeFile(labels, self.tempDir / "regions-in.nrrd"),
                               regionNamesCsv(labels, self.tempDir / "region-names.csv"))
            command = engineCommand(self.python, inputFiles, self.request, self.tempDir / "out", roiFile=roiFile,
                                    regionFiles=regionFiles)
            kwargs = {} if self.popen is None else {"popen": self.popen}
            self.worker = WorkerProcess(command, env=engineEnvironment(), onProgress=self.onProgress,
                                        onLog=self.onLog, **kwargs).start()
        except Exception:
            self._finish("failed")
            raise
        self.status = "running"
        return self

    def poll(self) -> str:
        """Handle what the worker reported; returns the status (``running`` until it has ended)."""
        if self.status != "running":
            return self.status
        code = self.worker.poll()
        if code is None:
            return self.status
        if code == 0:
            try:
                self.resultNodes = loadResults(self.scene, self.tempDir / "out", self.request.inputs[0],
                                               regionLabels=self.regionLabels)
            except Exception as err:  # noqa: BLE001 (reported to the user, never half-loaded)
                self.error = str(err)
                self._finish("failed")
                return self.status
            self._finish("done")
        else:
            self.error = self.worker.errorMessage()
            self._finish("failed")
        return self.status

    def wait(self, timeout: float | None = None) -> list:
        """Block until the job ends; the result nodes, or RuntimeError with the engine's message."""
        if self.status == "running":
            try:
                self.worker.wait(timeout)
            except TimeoutError:
                self.cancel()
                raise
        status = self.poll()
        if status == "failed":
            raise RuntimeError(self.error)
        if status == "cancelled":
            raise RuntimeError("cancelled")
        return self.resultNodes

    def cancel(self) -> None:
        if self.status == "running":
            self.worker.cancel()
            self._finish("cancelled")

    def _finish(self, status: str) -> None:
        self.status = status
        for node in self._temporaryNodes:
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self._temporaryNodes = []
        if self.tempDir is not None:
            shutil.rmtree(self.tempDir, ignore_errors=True)
