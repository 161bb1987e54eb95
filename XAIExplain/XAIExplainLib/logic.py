"""Everything the module does, without Qt: the base of ``XAIExplainLogic``, usable from the Python console.

Runs are in-process when they are quick (a handful of forward/backward passes)
and in a worker process otherwise, or as asked with ``useWorker``. With
``waitForCompletion=True`` a call returns the result nodes; with False it returns
at once and the caller drives the run with :meth:`poll` (the GUI does, from a
timer), and ``completionCallback(status, nodes, error)`` is called at the end.
"""
from __future__ import annotations

import time

from . import dependencies, display, job, regions, sampledata
from .volumenodes import volumeFromNode

QUICK_PASSES = 6  # forward + backward passes (per volume) that run in-process without a worker
DEVICES = ("auto", "cpu", "cuda")


class ExplainLogicBase:
    def __init__(self, scene, *, appLogic=None, vrLogic=None, python: str | None = None, popen=None):
        self.scene = scene
        self.appLogic = appLogic
        self.vrLogic = vrLogic
        self.python = python
        self.popen = popen
        self.job: job.ExplainJob | None = None
        self.lastResults: list = []
        self._cancelRequested = False
        self._inProcess = False  # an in-process run is under way (its progress callback may process GUI events)
        self.runInWorker = False  # where the last run went
        self._models: dict = {}
        self._callbacks = (None, None)

    # -- dependencies ------------------------------------------------------------------------------
    def missingDependencies(self) -> list[str]:
        return dependencies.missingRequirements()

    # -- models ------------------------------------------------------------------------------------
    @staticmethod
    def demoModelPath(name: str = "synthlesion_classifier") -> str:
        """A shipped demo bundle (found without importing the engine, so the panel opens without torch)."""
        engine = job.ENGINE_PARENT / "xaiexplain"
        # the engine's own lookup (xaiexplain.synthlesion.demo_model.models_dir): installed module, then repository checkout
        for models in (engine / "Resources" / "Models", engine.parent.parent / "Resources" / "Models",
                       engine.parent / "Resources" / "Models"):
            if (models / name).is_dir():
                return str(models / name)
        raise FileNotFoundError(f"the demo model '{name}' is not installed next to XAIExplain")

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
        import torch
        from xaiexplain.core.explain import _prediction, evaluation_mode, load_inputs
        from xaiexplain.core.models import model_output
        from xaiexplain.core.preprocess import Preprocessor

        loaded = self.loadModel(model, device)
        volume, _ = load_inputs([volumeFromNode(n) for n in self._nodes(inputVolumes)])
        x = Preprocessor(loaded.preprocessing).forward(volume)[None].to(loaded.device)
        with torch.inference_mode(), evaluation_mode(loaded):
            logits = model_output(loaded.network(x)).float()
        return _prediction(logits, loaded.class_names)

    @staticmethod
    def methodDescriptions() -> list[dict]:
        """The registered methods: name, title, family, signed, cost, reference (registry order)."""
        from xaiexplain.methods import REGISTRY

        return [method.describe() for method in REGISTRY.values()]

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
                + (f", {seconds:.1f} s" if seconds is not None else ""))

    # -- cost --------------------------------------------------------------------------------------
    @staticmethod
    def _costs(methods, params):
        from xaiexplain.methods import get_method

        for name in methods:
            method = get_method(name)
            yield method, method.cost(method.params((params or {}).get(method.name)))

    def estimatePasses(self, methods, params: dict | None = None) -> int:
        """Forward + backward passes per volume for ``methods`` (from the method registry; for methods
        that repeat per window or region, the passes of one window or region)."""
        return sum(int(cost["forward"]) + int(cost["backward"]) for _, cost in self._costs(methods, params))

    def shouldUseWorker(self, methods, params=None, useWorker: bool | None = None) -> bool:
        """Quick methods in-process; perturbation methods, per-window/per-region costs and long runs in a worker."""
        if useWorker is not None:
            return bool(useWorker)
        for method, cost in self._costs(methods, params):
            if cost.get("per") or method.family == "perturbation":
                return True
        return self.estimatePasses(methods, params) > QUICK_PASSES

    # -- running -----------------------------------------------------------------------------------
    @staticmethod
    def _nodes(inputVolumes) -> list:
        return list(inputVolumes) if isinstance(inputVolumes, (list, tuple)) else [inputVolumes]

    def process(self, inputVolumes, model: str, methods, *, target=None, versus=None, roi=None, layer=None,
                params: dict | None = None, seed: int = 0, device: str = "auto", regions=None,
                useWorker: bool | None = None, waitForCompletion: bool = True, progressCallback=None,
                completionCallback=None, show: bool = True, show3D: bool = False, threshold: float | None = None,
                opacity: float = display.DEFAULT_OPACITY):
        """Explain ``model`` on ``inputVolumes`` (one node, or a list: channels) with each of ``methods``.

        ``model``: a MONAI bundle folder, a TorchScript / .pt2 file (``demoModelPath()`` for the demo).
        ``target``/``versus``: class index or name; ``roi``: label map or segmentation node (or
        "predicted") for segmentation models; ``regions``: "harvard-oxford" or a label map node with
        named colours; ``params``: {method: {name: value}}. Returns the result nodes (one per method)
        when ``waitForCompletion``, else the running job (see :meth:`poll`).
        """
        if self.isRunning():
            raise RuntimeError("a run is in progress: cancel it or wait for it to finish")
        methods = [methods] if isinstance(methods, str) else list(methods)
        request = job.ExplainRequest(self._nodes(inputVolumes), str(model) if model else "", methods, target=target,
                                     versus=versus, roi=roi, layer=layer or None, params=dict(params or {}),
                                     seed=int(seed), device=device or "auto", regions=regions)
        request.validate()
        self._cancelRequested = False
        self._display = dict(show=show, show3D=show3D, threshold=threshold, opacity=opacity)
        self._callbacks = (progressCallback, completionCallback)
        self.runInWorker = self.shouldUseWorker(methods, params, useWorker)
        if not self.runInWorker:
            self._inProcess = True
            try:
                nodes = self._processInProcess(request, progressCallback)
            except Exception as err:
                if type(err).__name__ != "Cancelled":  # the engine's cancel exception: not an error
                    self._finished("failed", [], str(err))
                    raise
                nodes = None
            finally:
                self._inProcess = False
            if nodes is None:
                self._finished("cancelled", [], "cancelled")
                return []
            self._finished("done", nodes, "")
            return nodes
        self.job = job.ExplainJob(self.scene, request, python=self.python, onProgress=progressCallback,
                                  popen=self.popen).start()
        if not waitForCompletion:
            return self.job
        try:
            while self.poll() == "running":
                time.sleep(0.1)
        finally:
            if self.isRunning():
                self.cancel()
        if self.job.status != "done":
            raise RuntimeError(self.job.error or self.job.status)
        return self.lastResults

    def poll(self) -> str:
        """Drive a worker run (call it every ~100 ms); returns its status, 'idle' without a run."""
        if self.job is None:
            return "idle"
        if self.job.status == "running":
            status = self.job.poll()
            if status != "running":
                self._finished(status, self.job.resultNodes, self.job.error)
        return self.job.status

    def isRunning(self) -> bool:
        return self._inProcess or (self.job is not None and self.job.status == "running")

    def cancel(self) -> None:
        """Stop the run: a worker is killed with its children; an in-process run stops at the next batch."""
        self._cancelRequested = True
        if self.job is not None and self.job.status == "running":
            self.job.cancel()
            self._finished("cancelled", [], "cancelled")

    def _finished(self, status: str, nodes, error: str) -> None:
        self.lastResults = list(nodes) if status == "done" else []
        if status == "done" and self._display["show"]:
            for node in self.lastResults:
                self.showResult(node, threshold=self._display["threshold"], opacity=self._display["opacity"],
                                show3D=self._display["show3D"])
        completion = self._callbacks[1]
        if completion is not None:
            completion(status, self.lastResults, error)

    def _processInProcess(self, request: job.ExplainRequest, progressCallback) -> list:
        from xaiexplain import explain

        volumes = [volumeFromNode(n) for n in request.inputs]
        reference = request.inputs[0]
        kwargs = {}
        roi = request.roi
        if roi is not None and roi != "predicted":
            labels, temporary = job.roiLabelMap(self.scene, roi, reference)
            try:
                roi = volumeFromNode(labels)
            finally:
                if temporary:
                    self.scene.RemoveNode(labels)
        labelNode = None
        if request.regions not in (None, "harvard-oxford"):
            labelNode = regions.regionLabelMap(self.scene, request.regions, reference)
        regionSet, labelVolume, regionNames = self._regionSet(request.regions if labelNode is None else labelNode,
                                                              volumes[0], request.seed)
        if regionSet is not None:
            kwargs["regions"] = regionSet
        results = explain(self.loadModel(request.model, request.device), volumes, request.methods,
                          target=request.target, versus=request.versus, roi=roi, layer=request.layer,
                          params=request.params, seed=request.seed, device=request.device,
                          progress=progressCallback, cancel=lambda: self._cancelRequested, **kwargs)
        nodes = []
        for attribution in results:
            from .volumenodes import addVolumeNode

            node = addVolumeNode(self.scene, attribution.array, f"{reference.GetName()} {attribution.method}",
                                 reference=reference)
            display.markResult(node, method=attribution.method, signed=attribution.signed, inputNode=reference,
                               record=attribution.to_dict())
            rows = getattr(attribution, "regions", None)
            if rows:
                _, labelNode = job.addRegionResults(self.scene, node, rows, labelNode or labelVolume, regionNames,
                                                    prefix=node.GetName())
            nodes.append(node)
        return nodes

    @staticmethod
    def _regionSet(source, volume, seed):
        """Regions resolved once (the atlas registration is the slow part) so the label map can be shown too."""
        if source is None:
            return None, None, None
        try:
            from xaiexplain import regions as engineRegions  # atlas registration, user label maps
        except ImportError:
            raise ValueError("this version of the engine has no region support") from None

        if source == "harvard-oxford":
            found = engineRegions.resolve_regions("harvard-oxford", None, volume, seed=seed)
        else:
            names = regions.colorNames(source)
            found = engineRegions.resolve_regions(volumeFromNode(source), names, volume, seed=seed)
        return found, found.labels, dict(found.names)

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

    # -- sample data -------------------------------------------------------------------------------
    def loadSampleData(self, seed: int = sampledata.SAMPLE_SEED):
        """The SynthLesion brain and its lesion mask (label map)."""
        return sampledata.loadSynthLesion(self.scene, seed)
