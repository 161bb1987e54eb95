"""Everything the module does, without Qt: the base of ``XAIExplainLogic``, usable from the Python console.

A run is one :class:`~XAIExplainLib.request.ExplainRequest` given to one of two runners
(:mod:`XAIExplainLib.runners`): in-process when the methods are quick by the registry's
cost model, in a worker process otherwise (or as asked with ``useWorker``). Both end in
the engine's attributions, which :func:`~XAIExplainLib.results.addResultNodes` turns into
result nodes. The caller hears of a run through one callback set: ``progressCallback(fraction,
message)`` and ``completionCallback(status, nodes, error)``, called once however it ends.
With ``waitForCompletion=True`` a call returns the result nodes (a failure raises); with
False it returns the runner at once and the caller drives it with :meth:`poll` (the GUI
does, from a timer).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

from . import dependencies, display, regions, results, sampledata, trust
from .cohort import CohortLogic
from .featuremaps import FeatureLogic, describePrototypes
from .request import ExplainRequest
from .results import addResultNodes, labelSegmentation
from .runners import InProcessRunner, WorkerRunner
from .volumenodes import volumeFromNode

QUICK_PASSES = 6  # forward + backward passes (per volume) that run in-process without a worker
DEVICES = ("auto", "cpu", "cuda")
OFFERED_TYPES = ("int", "float", "str", "bool", "baseline")  # parameter types a panel can offer ("object": console)


class ExplainLogicBase(CohortLogic, FeatureLogic):
    def __init__(self, scene, *, appLogic=None, vrLogic=None, python: str | None = None, popen=None,
                 processEvents=None):
        self.scene = scene
        self.appLogic = appLogic
        self.vrLogic = vrLogic
        self.python = python
        self.popen = popen
        self.processEvents = processEvents  # run between an in-process run's reports (Slicer's event loop)
        self.runner = None  # the current or last run
        self.cohortRunner = None  # the current or last cohort run (CohortLogic.runCohort)
        self.status = "idle"  # the last run's: running, done, failed, cancelled
        self.lastResults: list = []
        self.lastWarnings: list[str] = []  # the last run's warnings about its maps, e.g. a blind baseline
        self._models: dict = {}
        self._exception = None
        self._display = {}
        self._completion = None

    # -- dependencies ------------------------------------------------------------------------------
    def missingDependencies(self) -> list[str]:
        return dependencies.missingRequirements()

    # -- models ------------------------------------------------------------------------------------
    @staticmethod
    def demoModelPath(name: str = "synthlesion_classifier") -> str:
        """A shipped demo bundle (the engine's torch-free lookup: the panel opens without torch)."""
        from xaiexplain.protocol import demo_bundle

        path = demo_bundle(name)
        if not path.is_dir():
            raise FileNotFoundError(f"the demo model '{name}' is not installed next to XAIExplain")
        return str(path)

    def loadModel(self, model: str, device: str = "auto"):
        """The engine's LoadedModel (cached per path and device): classes, task, channels."""
        key = (str(model), device)
        if key not in self._models:
            from xaiexplain import load_model

            self._models[key] = load_model(str(model), device=device)
        return self._models[key]

    def modelClasses(self, model: str) -> list[str]:
        loaded = self.loadModel(model)
        return list(loaded.class_names or [])

    def predict(self, inputVolumes, model: str, device: str = "auto") -> dict:
        """The model's prediction on the input (one forward pass, in-process): task, classes, probabilities."""
        from xaiexplain import prepare_case

        volumes = [volumeFromNode(n) for n in self._nodes(inputVolumes)]
        return prepare_case(self.loadModel(model, device), volumes, device=device).predict()

    def loadPrediction(self, inputVolumes, model: str, device: str = "auto", inferer: dict | None = None):
        """The model's own segmentation of the input as a segmentation node (one segment per predicted class,
        named after it), on the first input's grid: choose one of its segments as the ROI to explain."""
        from xaiexplain import load_model, prepare_case

        nodes = self._nodes(inputVolumes)
        loaded = self.loadModel(model, device)
        if inferer is not None:  # the cached model keeps its own windows
            loaded = load_model(dataclasses.replace(loaded), device=None, inferer=inferer)
        case = prepare_case(loaded, [volumeFromNode(n) for n in nodes], device=device)
        labels = case.predicted_labels()
        names = loaded.class_names or [str(i) for i in range(int(labels.max()) + 1)]
        if not (labels > 0).any():
            raise ValueError("the model predicts no voxel of any class but the background on this input")
        segmentation = labelSegmentation(self.scene, labels, nodes[0], names, f"{nodes[0].GetName()} prediction")
        segmentation.SetAttribute("XAIExplain.prediction", "true")
        return segmentation

    @staticmethod
    def windowSettings(text: str) -> dict | None:
        """The panel's sliding-window field: "" (the model's own: None), "none" ({}: no windows), or a window size
        "X Y Z" (one number: a cube) as the engine's inferer settings."""
        text = (text or "").strip().lower()
        if not text:
            return None
        if text == "none":
            return {}
        sizes = text.replace(",", " ").replace("x", " ").split()
        if len(sizes) not in (1, 3) or not all(size.isdigit() and int(size) > 0 for size in sizes):
            raise ValueError(f"sliding windows '{text}' are not a size in voxels: give X Y Z (e.g. 96 96 96), one "
                             "number for a cube, or none")
        return {"roi_size": [int(size) for size in sizes] * (3 // len(sizes))}

    # -- methods (all from the engine's registry) ------------------------------------------------------
    @staticmethod
    def methodDescriptions() -> list[dict]:
        """The registered methods: name, title, family, signed, cost, reference, parameters (registry order)."""
        from xaiexplain.methods import REGISTRY

        return [method.describe() for method in REGISTRY.values()]

    def methodChoices(self) -> list[dict]:
        """The method list of a panel: name, label (title, name, family, signed) and tooltip (the reference)."""
        return [{"name": m["name"], "toolTip": f"{m['title']}. {m['reference']}",
                 "label": f"{m['title']}  [{m['name']}; {m['family']}, {'signed' if m['signed'] else 'unsigned'}]"}
                for m in self.methodDescriptions()]

    @staticmethod
    def methodParameters(name: str) -> list[dict]:
        """A method's parameters a panel can offer: {name, type, default, min, max, choices}, typed and bounded."""
        from xaiexplain.methods import get_method

        return [p for p in get_method(name).parameters() if p["type"] in OFFERED_TYPES]

    def panelParameters(self, methods, values: dict) -> list[tuple]:
        """(method, parameter spec, current value) for each offered parameter of ``methods``."""
        return [(method, spec, values.get(method, {}).get(spec["name"], spec["default"]))
                for method in methods for spec in self.methodParameters(method)]

    @staticmethod
    def parameterField(spec: dict) -> dict:
        """How a panel offers a parameter: ``kind`` (choice, bool, int, float, text) with choices, or bounds,
        step and ``auto`` (an optional count: one below the minimum stands for None, the method's choice)."""
        if spec["choices"]:
            return {"kind": "choice", "choices": [str(c) for c in spec["choices"]]}
        if spec["type"] not in ("int", "float"):
            return {"kind": "bool" if spec["type"] == "bool" else "text"}
        integer, default = spec["type"] == "int", spec["default"]
        big = 2147483647 if integer else 1e12
        low = -big if spec["min"] is None else spec["min"]
        auto = default is None
        # enough decimals to show the default (1e-6 too) and a tenth of it, the step
        decimals = 0 if integer else 3 if not default else min(10, max(3, 2 - math.floor(math.log10(abs(default)))))
        return {"kind": spec["type"], "low": low - 1 if auto else low, "auto": auto, "decimals": decimals,
                "high": big if spec["max"] is None else spec["max"],
                "step": 1 if integer else (abs(default) / 10 if default else 0.1)}

    @staticmethod
    def parameterValue(field: dict, raw):
        """A panel field's value as the parameter's: typed, None at 'auto'."""
        kind = field["kind"]
        if kind == "int":
            return None if field["auto"] and raw <= field["low"] else int(raw)
        return float(raw) if kind == "float" else bool(raw) if kind == "bool" else str(raw)

    @staticmethod
    def withMethodParameter(text: str, method: str, name: str, value) -> str:
        """The panel's parameter values (JSON text, saved in the parameter node) with one more set."""
        values = json.loads(text) if text else {}
        values.setdefault(method, {})[name] = value
        return json.dumps(values, sort_keys=True)

    def methodParametersFromText(self, text: str, methods) -> dict:
        """{method: {name: value}} of the panel's values for ``methods``, by the registry's parameters (a value
        saved by another version for a parameter the method no longer has is left out)."""
        values, out = json.loads(text) if text else {}, {}
        for method in methods:
            offered = {p["name"] for p in self.methodParameters(method)}
            chosen = {k: v for k, v in (values.get(method) or {}).items() if k in offered}
            if chosen:
                out[method] = chosen
        return out

    @staticmethod
    def describePrediction(prediction: dict) -> str:
        if prediction.get("task") != "classification":
            return "Segmentation model: choose the class to explain (and an ROI)."
        names = prediction.get("class_names") or [str(i) for i in range(len(prediction["probabilities"]))]
        parts = [f"{name} {p:.3f}" for name, p in zip(names, prediction["probabilities"])]
        return f"Prediction: <b>{prediction['predicted_name']}</b> ({', '.join(parts)})"

    @staticmethod
    def describeResult(node) -> str:
        record = display.record(node)
        if not record:
            return ""
        target = record.get("target", {})
        seconds = record.get("timings", {}).get("seconds")
        return (f"{record.get('method')}: target {target.get('name', target.get('class', '?'))}"
                + (f", {seconds:.1f} s" if seconds is not None else "")
                + describePrototypes(record) + "".join(f"\nWARNING: {text}" for text in display.warnings(node))
                + "\n" + trust.describeTrust(node))

    def describeWarnings(self) -> str:
        """The last run's warnings for the status line ('' when none)."""
        if not self.lastWarnings:
            return ""
        return f"{len(self.lastWarnings)} warning(s): " + "\n".join(f"WARNING: {t}" for t in self.lastWarnings)

    def completionText(self, nodes) -> str:
        """The status line after a run: the result nodes, then its warnings (where one looks)."""
        return "\n".join(filter(None, [f"Done: {', '.join(n.GetName() for n in nodes)}", self.describeWarnings()]))

    # -- cost --------------------------------------------------------------------------------------
    @staticmethod
    def _costs(methods, params) -> list[dict]:
        """Each method's cost model for its parameters (unknown parameters raise here, before any run)."""
        from xaiexplain.methods import get_method

        out = []
        for name in methods:
            method = get_method(name)
            given = (params or {}).get(name, (params or {}).get(method.name))
            out.append(method.cost(method.params(given)))
        return out

    def estimatePasses(self, methods, params: dict | None = None) -> int:
        """Forward + backward passes per volume for ``methods`` (from the method registry; for methods
        that repeat per window or region, the passes of one window or region)."""
        return sum(int(cost["forward"]) + int(cost["backward"]) for cost in self._costs(methods, params))

    def shouldUseWorker(self, methods, params=None, useWorker: bool | None = None) -> bool:
        """By the cost model: a cost per window or region, or more than QUICK_PASSES passes, runs in a worker.

        ``useWorker`` True/False decides instead (the registry is not consulted: the run checks the names).
        """
        if useWorker is not None:
            return bool(useWorker)
        costs = self._costs(methods, params)
        return any(cost.get("per") for cost in costs) or self.estimatePasses(methods, params) > QUICK_PASSES

    def describeCost(self, methods, params=None, useWorker: bool | None = None) -> str:
        if not methods:
            return "Check at least one method."
        per = sorted({cost["per"] for cost in self._costs(methods, params) if cost.get("per")})
        where = "a separate process" if self.shouldUseWorker(methods, params, useWorker) else "Slicer"
        return (f"About {self.estimatePasses(methods, params)} forward/backward passes"
                + (f" per {' / '.join(per)}" if per else "") + f", run in {where}.")

    # -- running -----------------------------------------------------------------------------------
    @staticmethod
    def _nodes(inputVolumes) -> list:
        return list(inputVolumes) if isinstance(inputVolumes, (list, tuple)) else [inputVolumes]

    def process(self, inputVolumes, model: str, methods, *, target=None, versus=None, roi=None, layer=None,
                params: dict | None = None, seed: int = 0, device: str = "auto", regions=None,
                roiSegment: str | None = None, inferer: dict | None = None, checks=None,
                checkSettings: dict | None = None, useWorker: bool | None = None, waitForCompletion: bool = True,
                progressCallback=None, completionCallback=None, show: bool = True, show3D: bool = False,
                threshold: float | None = None, opacity: float = display.DEFAULT_OPACITY):
        """Explain ``model`` on ``inputVolumes`` (one node, or a list: channels) with each of ``methods``.

        ``model``: a MONAI bundle folder, a TorchScript / .pt2 file (``demoModelPath()`` for the demo).
        ``target``/``versus``: class index or name; ``roi``: label map or segmentation node (or
        "predicted", "component:N") for segmentation models, with ``roiSegment`` (ID or name) one segment of a
        segmentation (else its visible ones); ``inferer``: sliding-window settings ({"roi_size": [96, 96, 96],
        "overlap": 0.25, "mode": "gaussian"}; {}: none) over the model's own; ``regions``: "harvard-oxford" or a
        label map node with
        named colours (or a segmentation); ``params``: {method: {name: value}}. Returns the result nodes
        (one per method) when ``waitForCompletion``, else the runner (see :meth:`poll`). ``checks``: True or check
        names: every result then carries its trust card (see :meth:`checkResult`).
        """
        methods = [methods] if isinstance(methods, str) else list(methods)
        request = ExplainRequest(self._nodes(inputVolumes), str(model) if model else "", methods, target=target,
                                 versus=versus, roi=roi, layer=layer or None, params=dict(params or {}),
                                 seed=int(seed), device=device or "auto", regions=regions, roiSegment=roiSegment,
                                 inferer=inferer, checks=checks, checkSettings=dict(checkSettings or {}))
        return self._start(request, useWorker=useWorker, waitForCompletion=waitForCompletion,
                           progressCallback=progressCallback, completionCallback=completionCallback,
                           display=dict(show=show, show3D=show3D, threshold=threshold, opacity=opacity))

    def checkResult(self, resultNode, checks=True, checkSettings: dict | None = None, *, useWorker: bool | None = None,
                    waitForCompletion: bool = True, progressCallback=None, completionCallback=None):
        """The trust card of a result: its map re-made as it was made (method, parameters, seed, target, ROI,
        regions, windows), with the checks (True: all; or names of ``xaiexplain.trust.CHECKS``) and their
        ``checkSettings``. The card goes onto ``resultNode`` (attributes, curves chart, shortcut region), with a
        check that the re-made map is the one shown; no new result node. Runs like :meth:`process`."""
        record = display.record(resultNode)
        if not record:
            raise ValueError(f"'{resultNode.GetName()}' is not an XAIExplain result")
        settings = results.requestSettings(resultNode)
        method = record["method"]
        settings.update(methods=[method], params={k: v for k, v in settings["params"].items() if k == method},
                        seed=int(record.get("seed", 0)), checks=checks, checkSettings=dict(checkSettings or {}),
                        checkNode=resultNode)
        return self._start(ExplainRequest(**settings), useWorker=useWorker, waitForCompletion=waitForCompletion,
                           progressCallback=progressCallback, completionCallback=completionCallback,
                           display=dict(show=False))

    def _start(self, request: ExplainRequest, *, useWorker, waitForCompletion, progressCallback, completionCallback,
               display: dict):
        if self.isRunning():
            raise RuntimeError("a run is in progress: cancel it or wait for it to finish")
        request.validate()
        inWorker = self.shouldUseWorker(request.methods, request.params, useWorker) or bool(
            request.checks and useWorker is None)  # checks re-make maps several times: a worker by default
        self._display = display
        self._completion = completionCallback
        self.lastResults, self.lastWarnings, self._exception = [], [], None
        callbacks = dict(onProgress=progressCallback, onFinished=self._onFinished)
        if inWorker:
            self.runner = WorkerRunner(self.scene, request, python=self.python, popen=self.popen, **callbacks)
        else:
            self.runner = InProcessRunner(self.scene, request, loadModel=self.loadModel,
                                          processEvents=self.processEvents, **callbacks)
        self.status = "running"
        self.runner.start()
        if not waitForCompletion:
            return self.runner
        try:
            while self.poll() == "running":
                time.sleep(0.05)
        finally:
            if self.isRunning():
                self.cancel()
        if self.status == "failed":
            raise self._exception if self._exception is not None else RuntimeError("the explanation failed")
        return self.lastResults

    def poll(self) -> str:
        """Drive the run (call it every ~100 ms); returns its status, 'idle' without a run."""
        if self.isRunning():
            self.runner.poll()
        return self.status

    def isRunning(self) -> bool:
        return self.runner is not None and self.runner.status == "running"

    def cancel(self) -> None:
        """Stop the run: a worker is killed with its children; an in-process run stops at the next batch."""
        if self.isRunning():
            self.runner.cancel()

    def _onFinished(self, runner) -> None:
        """The one end of every run: result nodes, display, the completion callback."""
        status, error, self._exception = runner.status, runner.error, runner.exception
        nodes = []
        checked = runner.request.checkNode
        if status == "done":
            try:
                if checked is not None:  # a card for a result shown: onto it
                    results.addCard(self.scene, checked, runner.attributions[0])
                    nodes = [checked]
                else:
                    nodes = addResultNodes(self.scene, runner.attributions, runner.request,
                                           regionLabels=runner.case.regionLabels)
            except Exception as err:  # noqa: BLE001 (reported like any failure)
                status, error, self._exception = "failed", str(err), err
        self.status, self.lastResults = status, nodes
        self.lastWarnings = [] if checked is not None else [text for node in nodes for text in display.warnings(node)]
        for text in self.lastWarnings:  # Slicer's log and the Python console
            logging.warning(f"XAIExplain: {text}")
        if self._display.get("show") and checked is None:
            for node in nodes:
                self.showResult(node, threshold=self._display["threshold"], opacity=self._display["opacity"],
                                show3D=self._display["show3D"])
        if self._completion is not None:
            self._completion(status, nodes, error)

    # -- display -----------------------------------------------------------------------------------
    def showResult(self, resultNode, *, threshold: float | None = None, opacity: float = display.DEFAULT_OPACITY,
                   show3D: bool = False, background=None) -> None:
        """Overlay in all slice views (over its input), colour legend, and optionally volume rendering."""
        display.showResult(self.scene, resultNode, background=background, thresholdValue=threshold,
                           opacity=opacity, show3D=show3D, vrLogic=self.vrLogic)

    def setThreshold(self, resultNode, value: float) -> None:
        display.setThreshold(self.scene, resultNode, value)

    def setOpacity(self, resultNode, value: float) -> None:
        display.setOpacity(self.scene, resultNode, value)

    def showIn3D(self, resultNode, visible: bool = True):
        return display.showVolumeRendering(self.vrLogic, resultNode, visible)

    def resultNodes(self) -> list:
        """Every XAIExplain result in the scene (also those of a loaded scene)."""
        nodes = self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())
                if display.isResult(nodes.GetItemAsObject(i))]

    def regionTable(self, resultNode):
        return resultNode.GetNodeReference(regions.REGIONS_REFERENCE)

    def showRegionTable(self, resultNode) -> bool:
        """Show the result's region table in Slicer's table view (False if the result has none)."""
        table = self.regionTable(resultNode)
        if table is None or self.appLogic is None:
            return False
        regions.showRegionTable(self.appLogic, table)
        return True

    def centerOnRegion(self, resultNode, row: int):
        """Centre the slice views on the region in ``row`` of the result's table (as clicking the row does)."""
        table = self.regionTable(resultNode)
        labels = table.GetNodeReference(regions.LABELS_REFERENCE) if table is not None else None
        if labels is None:
            return None
        regionId = regions.regionRowsFromTable(table)[row].id
        return regions.centerViewsOnRegion(self.scene, labels, regionId)

    # -- trust ---------------------------------------------------------------------------------------
    @staticmethod
    def trustCard(resultNode) -> dict | None:
        """The result's trust card (verdicts, numbers, curves), None before :meth:`checkResult`."""
        return trust.trustCard(resultNode)

    def shortcutCheck(self, resultNode) -> dict:
        """The shortcut check alone, at once (no model pass): the share of the map's top evidence outside the
        anatomy, its verdict, and (unless it passes) the offending region as a segmentation linked to the result."""
        from xaiexplain.trust import shortcut_check

        inputNode = resultNode.GetNodeReference(display.INPUT_REFERENCE)
        if inputNode is None:
            raise ValueError(f"the input volume of '{resultNode.GetName()}' is no longer in the scene")
        value = shortcut_check(volumeFromNode(inputNode), volumeFromNode(resultNode).array[0])
        region = value.pop("region")
        resultNode.SetAttribute(trust.TRUST + ".shortcut", value["verdict"])
        resultNode.SetAttribute(display.PREFIX + "shortcut", json.dumps(value))
        if region is not None and region.any():
            value["segmentation"] = trust.addShortcutSegmentation(self.scene, resultNode, region)
        return value

    def showCurves(self, resultNode) -> bool:
        """Show the result's deletion/insertion chart in Slicer's plot view (False before its card)."""
        chart = trust.curvesChart(resultNode)
        if chart is None or self.appLogic is None:
            return False
        self.appLogic.GetSelectionNode().SetActivePlotChartID(chart.GetID())
        self.appLogic.PropagatePlotChartSelection()
        layout = self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is not None:
            layout.SetViewArrangement(38)  # four-up, plot and table: the curves beside the region table
        return True

    def compareRegions(self, resultNodes=None):
        """One table node with the region scores and ranks of several results side by side (default: every
        result with a region table), regions in the first one's rank order; shown in the table view."""
        nodes = [n for n in (resultNodes or self.resultNodes()) if self.regionTable(n) is not None]
        if not nodes:
            raise ValueError("no result has a region table: explain with regions (an atlas or a label map) first")
        table = regions.addComparisonTable(self.scene, [(display.record(n).get("method", n.GetName()),
                                                         regions.regionRowsFromTable(self.regionTable(n)))
                                                        for n in nodes])
        if self.appLogic is not None:
            regions.showRegionTable(self.appLogic, table)
        return table

    def writeReport(self, folder, resultNodes=None) -> list:
        """report.html and report.pdf of results (default: every result in the scene) into ``folder``: the input,
        model and software, each map's previews and trust card, the curves and the region tables."""
        from pathlib import Path

        from xaiexplain.io.report import write_report

        nodes = list(resultNodes or self.resultNodes())
        if not nodes:
            raise ValueError("there is no result to report: explain first")
        inputNode = nodes[0].GetNodeReference(display.INPUT_REFERENCE)
        if inputNode is None:
            raise ValueError(f"the input volume of '{nodes[0].GetName()}' is no longer in the scene")
        Path(folder).mkdir(parents=True, exist_ok=True)
        attributions = [results.attributionFromNode(node) for node in nodes]
        return write_report(folder, volumeFromNode(inputNode), attributions,
                            {"inputs": [inputNode.GetName()], "command": "XAIExplain in 3D Slicer"})

    # -- sample data -------------------------------------------------------------------------------
    def loadSampleData(self, seed: int = sampledata.SAMPLE_SEED):
        """The SynthLesion brain and its lesion mask (label map)."""
        return sampledata.loadSynthLesion(self.scene, seed)
