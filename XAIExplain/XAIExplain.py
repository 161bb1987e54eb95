"""XAIExplain: explain 3D medical-imaging deep-learning models inside 3D Slicer.

Thin on purpose: the module, its parameter node, the panel (widgets <-> logic), the logic (Slicer's singletons added
to XAIExplainLib's Qt-free logic) and the self-test. The computation is the ``xaiexplain`` engine beside this file,
imported only when needed, after its Python dependencies have been checked."""
import logging
from typing import Annotated

import qt
import slicer
import vtk
from XAIExplainGui import fields
from XAIExplainGui.featuremaps import FeatureMapsSection
from XAIExplainLib import dependencies, display, sampledata
from XAIExplainLib.logic import ExplainLogicBase
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin


class XAIExplain(ScriptedLoadableModule):
    """Module metadata. The icon is Resources/Icons/XAIExplain.png, which ScriptedLoadableModule finds by name."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XAIExplain"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["XAIExplain developers"]
        self.parent.helpText = """
Explainable AI for 3D medical-imaging models: XAIExplain computes attribution maps that show which voxels of the
input drove a model's output (a class score, a contrast between two classes, or a segmentation network's class in
a region: a label map, a segment, or one segment of the model's own prediction, at full resolution through
sliding windows), as volumes on the input's own grid, overlaid in the slice views and, on request, rendered in 3D.
<p>The methods are the engine's registry: the method list shows each with its title, family (gradient, CAM, backprop,
propagation, perturbation) and publication (e.g. Simonyan et al. 2014; Selvaraju et al. 2017 for Grad-CAM;
Sundararajan et al. 2017); Advanced offers the checked methods' parameters, with their ranges and choices.</p>
<p>Unsigned maps are Inferno, signed ones blue-red with a transparent centre. Quick methods run inside Slicer, long
ones in a separate process (Cancel stops them at once). Console: <code>getModuleLogic("XAIExplain").process</code>.</p>
<p>Check this map gives each result a trust card (randomisation, deletion/insertion against random maps, shortcut);
Write report makes HTML and PDF. The engine, <code>xaiexplain</code>, needs no Slicer (also a command).</p>
"""
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = """
XAIExplain is built on 3D Slicer, PyTorch (the Slicer PyTorch extension), MONAI and SimpleITK; its methods follow their
publications (e.g. Selvaraju et al. 2017 for Grad-CAM), each cited in the method list. SynthLesion is made from
MNI152 and the Harvard-Oxford atlas (FSL)."""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """SynthLesion in the Sample Data module; generated on click (after the dependencies are installed)."""
    import SampleData

    def load():
        logic = XAIExplainLogic()
        return logic.loadSampleData() if logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay) else None

    sampledata.registerSampleData(SampleData.SampleDataLogic, load)


@parameterNodeWrapper
class XAIExplainParameterNode:
    """The panel's state, saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    inputVolume2: slicer.vtkMRMLScalarVolumeNode
    inputVolume3: slicer.vtkMRMLScalarVolumeNode
    useDemoModel: bool = True
    modelPath: str = ""
    target: str = ""
    versus: str = ""
    roiNode: slicer.vtkMRMLNode
    roiSegment: str = ""  # of a segmentation ROI: this segment alone (empty: its visible segments)
    windowSize: str = ""  # sliding windows, "X Y Z" voxels (empty: the model's own; "none": no windows)
    methods: str = "gradcam"  # comma-separated method names
    methodParameters: str = ""  # JSON {method: {parameter: value}}: the values set in the panel (registry-checked)
    layer: str = ""
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    execution: Annotated[str, Choice(["auto", "worker", "in-process"])] = "auto"
    regionSource: Annotated[str, Choice(["none", "harvard-oxford", "label map"])] = "none"
    regionLabelMap: slicer.vtkMRMLNode  # label map with named colours, or segmentation
    resultVolume: slicer.vtkMRMLScalarVolumeNode
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = display.DEFAULT_OPACITY
    threshold: Annotated[float, WithinRange(0.0, 1e30)] = 0.0
    showIn3D: bool = False


class XAIExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: widgets <-> parameter node <-> logic. No decisions here beyond enabling buttons."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shownResult = None  # the result whose display settings the Results section edits
        self._loadingResult = False
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XAIExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XAIExplainLogic()

        self.ui.resultSelector.addAttribute("vtkMRMLScalarVolumeNode", display.PREFIX + "method")
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.loadPredictionButton.connect("clicked(bool)", self.onLoadPrediction)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.methodsListWidget.connect("itemChanged(QListWidgetItem*)", self.onMethodsChanged)
        self.ui.targetComboBox.connect("currentIndexChanged(int)", self.onTargetChanged)
        self.ui.versusComboBox.connect("currentIndexChanged(int)", self.onTargetChanged)
        self.ui.regionTableView.connect("clicked(QModelIndex)", self.onRegionClicked)
        self.ui.checkButton.connect("clicked(bool)", self.onCheckButton)
        self.ui.shortcutButton.connect("clicked(bool)", self.onShortcutCheck)
        self.ui.curvesButton.connect("clicked(bool)", lambda: self.logic.showCurves(self._parameterNode.resultVolume))
        self.ui.compareButton.connect("clicked(bool)", self.onCompareRegions)
        self.ui.reportButton.connect("clicked(bool)", self.onWriteReport)

        self.featureMaps = FeatureMapsSection(self)  # layer and channel picker, built in code: above the spacer
        uiWidget.layout().insertWidget(uiWidget.layout().count() - 1, self.featureMaps.section)

        self.initializeParameterNode()
        qt.QTimer.singleShot(0, self.fillMethods)  # after the panel shows: the method list imports the engine

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not display.isResult(first):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._shownResult = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateButtons()
        if self._loadingResult:
            return
        node = self._parameterNode.resultVolume if self._parameterNode else None
        if node is not self._shownResult:
            self._shownResult = node
            self.showResultSettings(node)
        elif display.isResult(node):
            self.applyResultSettings(node)

    # -- panel state ---------------------------------------------------------------------------------
    def updateButtons(self, caller=None, event=None) -> None:
        p, running = self._parameterNode, self.logic.isRunning()
        ready = bool(p and p.inputVolume and self.modelPath() and p.methods)
        checking = running and self.logic.runner.request.checkNode is not None
        self.ui.applyButton.text = "Cancel" if running and not checking else "Apply"
        self.ui.applyButton.toolTip = ("Stop the run" if running else
                                       "Compute the maps" if ready else "Select an input volume, a model and a method")
        self.ui.modelPathLineEdit.enabled = bool(p and not p.useDemoModel)
        self.ui.regionLabelMapSelector.enabled = bool(p and p.regionSource == "label map")
        self.ui.loadPredictionButton.enabled = bool(p and p.inputVolume and self.modelPath()) and not running
        self.ui.applyButton.enabled = (running and not checking) or (ready and not running)
        result = p.resultVolume if p else None
        self.ui.checkButton.enabled = checking or (display.isResult(result) and not running)
        self.ui.checkButton.text = "Cancel" if checking else "Check this map"
        self.ui.shortcutButton.enabled = self.ui.curvesButton.enabled = display.isResult(result) and not running

    def modelPath(self) -> str:
        p = self._parameterNode
        return "" if p is None else self.logic.demoModelPath() if p.useDemoModel else p.modelPath

    def fillMethods(self) -> None:
        """Check boxes for the registered methods (the engine is needed: skipped until it is installed)."""
        if self.logic.missingDependencies() or not self.logic.torchAvailable():
            self.ui.statusLabel.text = "Python packages are missing: Apply installs them (after asking)."
            return
        chosen = set(self._parameterNode.methods.split(",")) if self._parameterNode else set()
        self.ui.methodsListWidget.blockSignals(True)
        self.ui.methodsListWidget.clear()
        for method in self.logic.methodChoices():
            item = qt.QListWidgetItem(method["label"])
            item.setData(qt.Qt.UserRole, method["name"])
            item.setToolTip(method["toolTip"])
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if method["name"] in chosen else qt.Qt.Unchecked)
            self.ui.methodsListWidget.addItem(item)
        self.ui.methodsListWidget.blockSignals(False)
        self.onMethodsChanged()

    def checkedMethods(self) -> list:
        widget = self.ui.methodsListWidget
        return [widget.item(i).data(qt.Qt.UserRole) for i in range(widget.count)
                if widget.item(i).checkState() == qt.Qt.Checked]

    def onMethodsChanged(self, item=None) -> None:
        if self._parameterNode:
            self._parameterNode.methods = ",".join(self.checkedMethods())
        self.fillMethodParameters()
        self.updateCost()

    def updateCost(self) -> None:
        self.ui.costLabel.text = self.logic.describeCost(self.checkedMethods(), self.methodParams(), self.useWorker())

    def fillMethodParameters(self) -> None:
        """One typed, bounded field per parameter of each checked method, as the registry declares them."""
        layout = self.ui.methodParametersWidget.layout()
        while layout.rowCount() > 0:
            layout.removeRow(0)
        for method, spec, value in self.logic.panelParameters(self.checkedMethods(), self.methodParams()):
            layout.addRow(f"{method} {spec['name']}:", self.parameterField(method, spec, value))

    def parameterField(self, method: str, spec: dict, value):
        """A combo box (choices), check box, spin box (bounds; an optional count shows 'auto') or line edit."""
        field = self.logic.parameterField(spec)

        def setValue(raw):
            self._parameterNode.methodParameters = self.logic.withMethodParameter(
                self._parameterNode.methodParameters, method, spec["name"], self.logic.parameterValue(field, raw))
            self.updateCost()

        widget, signal = fields.parameterWidget(field, value)
        widget.connect(signal, setValue)
        widget.toolTip = f"{method}.{spec['name']} (default: {spec['default']})"
        return widget

    def onModelPathChanged(self, path) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path

    def onTargetChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.target = self.ui.targetComboBox.currentData or ""
            self._parameterNode.versus = self.ui.versusComboBox.currentData or ""

    def methodParams(self) -> dict:
        """The values set in the panel, for the checked methods."""
        p = self._parameterNode
        return self.logic.methodParametersFromText(p.methodParameters, self.checkedMethods()) if p else {}

    def useWorker(self):
        return {"auto": None, "worker": True, "in-process": False}[self._parameterNode.execution]

    def inputVolumes(self) -> list:
        p = self._parameterNode
        return [node for node in (p.inputVolume, p.inputVolume2, p.inputVolume3) if node]

    # -- actions -------------------------------------------------------------------------------------
    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to load the SynthLesion sample.", waitCursor=True):
            if not self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay):
                return
            brain, lesion = self.logic.loadSampleData()
            self._parameterNode.inputVolume = brain
            slicer.util.setSliceViewerLayers(background=brain, label=lesion, fit=True)
            self.fillMethods()

    def onLoadModel(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to load the model.", waitCursor=True):
            if not self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay):
                return
            model, device = self.modelPath(), self._parameterNode.device
            classes = self.logic.modelClasses(model)
            for combo, first in ((self.ui.targetComboBox, "predicted class"), (self.ui.versusComboBox, "none")):
                combo.blockSignals(True)
                combo.clear()
                combo.addItem(first, "")
                for index, name in enumerate(classes):
                    combo.addItem(f"{index}: {name}", name)
                combo.blockSignals(False)
            text = f"Classes: {', '.join(classes)}" if classes else "The model names no classes."
            if self.inputVolumes():
                prediction = self.logic.predict(self.inputVolumes(), model, device)
                text = self.logic.describePrediction(prediction)
            self.ui.predictionLabel.text = text
            self.fillMethods()

    def onApplyButton(self) -> None:
        p = self._parameterNode
        regionSource = {"none": None, "harvard-oxford": "harvard-oxford", "label map": p.regionLabelMap}[p.regionSource]
        self.startRun("Failed to compute the explanation.", lambda: self.logic.process(
            self.inputVolumes(), self.modelPath(), [m for m in p.methods.split(",") if m], target=p.target or None,
            versus=p.versus or None, roi=p.roiNode, roiSegment=p.roiSegment or None,
            inferer=self.logic.windowSettings(p.windowSize), layer=p.layer or None, params=self.methodParams(),
            seed=p.seed, device=p.device, regions=regionSource, useWorker=self.useWorker(), waitForCompletion=False,
            progressCallback=self.onProgress, completionCallback=self.onCompleted, show3D=p.showIn3D,
            opacity=p.opacity))

    def onCheckButton(self) -> None:
        """The trust card of the selected result, in a worker with progress; the button becomes Cancel."""
        self.startRun("Failed to check the map.", lambda: self.logic.checkResult(
            self._parameterNode.resultVolume, waitForCompletion=False, progressCallback=self.onProgress,
            completionCallback=self.onCompleted))

    def startRun(self, failure: str, start) -> None:
        """Cancel the run in progress, or start one (``start()``) with the progress bar and the timer."""
        if self.logic.isRunning():
            self.logic.cancel()
            self.updateButtons()
            return
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            if not self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay):
                return
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = "Starting..."
            start()
            if self.logic.isRunning():
                self._timer.start()
        if not self.logic.isRunning():
            self.ui.progressBar.hide()
        self.updateButtons()

    def onShortcutCheck(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to check for shortcuts.", waitCursor=True):
            value = self.logic.shortcutCheck(self._parameterNode.resultVolume)
            self.ui.statusLabel.text = f"Shortcut check: {value['verdict']}: {value['text']}"

    def onCompareRegions(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to compare the region tables.", waitCursor=True):
            self.ui.regionTableView.setMRMLTableNode(self.logic.compareRegions())

    def onWriteReport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "Folder for report.html and report.pdf")
        with slicer.util.tryWithErrorDisplay("Failed to write the report.", waitCursor=True):
            self.ui.statusLabel.text = f"Wrote {', '.join(map(str, self.logic.writeReport(folder)))}" if folder else ""

    def onLoadPrediction(self) -> None:
        """The model's own segmentation of the input, as a segmentation node: the ROI, one segment chosen."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to load the model's prediction.", waitCursor=True):
            p.roiNode = self.logic.loadPrediction(self.inputVolumes(), self.modelPath(), p.device,
                                                  self.logic.windowSettings(p.windowSize))

    def onTimer(self) -> None:
        if self.logic.poll() != "running":
            self._timer.stop()

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(1000 * fraction)
        self.ui.statusLabel.text = message
        self.updateButtons()

    def onCompleted(self, status: str, nodes, error: str) -> None:
        self._timer.stop()
        self.ui.progressBar.hide()
        if status == "done":
            self.ui.statusLabel.text = self.logic.completionText(nodes)  # with warnings, e.g. a blind baseline
            if nodes:
                self._parameterNode.resultVolume = nodes[-1]
                self.showResultSettings(nodes[-1])  # a checked result: its card
        elif status == "cancelled":
            self.ui.statusLabel.text = "Cancelled: no result was added."
        else:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"The explanation failed: {error}")
        self.updateButtons()

    # -- results -------------------------------------------------------------------------------------
    def showResultSettings(self, node) -> None:
        """A result was selected: its own threshold, opacity and 3D visibility go to the panel, its record and table."""
        if not display.isResult(node):
            self.ui.recordLabel.text = ""
            self.ui.regionTableView.setMRMLTableNode(None)
            return
        top = float(node.GetAttribute(display.PREFIX + "displayMax"))
        self.ui.thresholdSliderWidget.maximum = top
        self.ui.thresholdSliderWidget.singleStep = top / 200.0
        rendering = display.volumeRenderingDisplayNode(node)
        self._loadingResult = True  # the panel takes the node's settings: nothing to apply back meanwhile
        try:
            self._parameterNode.threshold = display.threshold(node)
            self._parameterNode.opacity = float(node.GetAttribute(display.PREFIX + "opacity") or display.DEFAULT_OPACITY)
            self._parameterNode.showIn3D = bool(rendering is not None and rendering.GetVisibility())
        finally:
            self._loadingResult = False
        self.ui.recordLabel.text = self.logic.describeResult(node)
        self.ui.regionTableView.setMRMLTableNode(self.logic.regionTable(node))
        self.logic.showRegionTable(node)

    def applyResultSettings(self, node) -> None:
        p = self._parameterNode
        if self.ui.thresholdSliderWidget.maximum > float(node.GetAttribute(display.PREFIX + "displayMax")) * 1.01:
            self.ui.thresholdSliderWidget.maximum = float(node.GetAttribute(display.PREFIX + "displayMax"))
        if abs(display.threshold(node) - p.threshold) > 1e-12:
            self.logic.setThreshold(node, p.threshold)
        if node.GetAttribute(display.PREFIX + "opacity") != f"{p.opacity:.6g}":
            self.logic.setOpacity(node, p.opacity)
        rendering = display.volumeRenderingDisplayNode(node)
        if p.showIn3D != bool(rendering is not None and rendering.GetVisibility()):
            self.logic.showIn3D(node, p.showIn3D)

    def onRegionClicked(self, index) -> None:
        node = self._parameterNode.resultVolume
        if display.isResult(node):
            self.logic.centerOnRegion(node, index.row())


class XAIExplainLogic(ScriptedLoadableModuleLogic, ExplainLogicBase):
    """Everything the panel does, callable from the Python console (its methods: XAIExplainLib.logic), e.g.::

        logic = slicer.util.getModuleLogic("XAIExplain")
        brain, lesion = logic.loadSampleData()
        nodes = logic.process(brain, logic.demoModelPath(), ["gradcam", "integrated-gradients"], target="lesion")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ExplainLogicBase.__init__(self, slicer.mrmlScene, appLogic=slicer.app.applicationLogic(),
                                  vrLogic=slicer.modules.volumerendering.logic(),
                                  processEvents=lambda: slicer.app.processEvents())  # in-process: Cancel clickable

    def getParameterNode(self):
        return XAIExplainParameterNode(super().getParameterNode())

    @staticmethod
    def torchAvailable() -> bool:
        return dependencies.isSatisfied("torch")

    def ensureDependencies(self, confirm=None) -> bool:
        """PyTorch (the PyTorch extension) and Resources/requirements.txt; ``confirm(message) -> bool`` is asked
        before installing on Slicer < 5.12 (5.12's pip_ensure asks itself)."""
        if not self.torchAvailable() and not dependencies.ensureTorch(askConfirmation=True):
            return False
        missing = self.missingDependencies()
        if missing:
            logging.info("XAIExplain: installing %s", ", ".join(missing))
        return dependencies.installRequirements(missing, slicer, confirm=confirm)


class XAIExplainTest(ScriptedLoadableModuleTest):
    """Runs in Slicer's test mode on the SynthLesion sample and the demo model (XAIExplainLib.selftest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from XAIExplainLib import selftest

        for test in (selftest.inProcess, selftest.workerProcess):
            self.setUp()
            test(self, XAIExplainLogic())
