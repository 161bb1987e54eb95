"""XAIExplain.py itself, loaded with stand-ins for the parts of Slicer that need the application (Qt, the
scripted-module base classes, the parameter-node wrapper, CTK): its classes are defined without error, the module
registers its sample data, and the console logic is the tested Qt-free logic wired to the scene's logics.
The panel (Qt) and the self-test run in Slicer only.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from slicer_harness import MODULE_DIR, SlicerHarness  # noqa: E402
from XAIExplainLib import display, volumenodes  # noqa: E402
from XAIExplainLib.logic import ExplainLogicBase  # noqa: E402


class _Module:
    def __init__(self, parent):
        self.parent = parent

    def getDefaultModuleDocumentationLink(self):
        return ""


def _wrap(cls):
    """Stands in for @parameterNodeWrapper: the instance wraps a scripted-module node."""
    def __init__(self, parameterNode=None):
        self.parameterNode = parameterNode

    cls.__init__ = __init__
    return cls


class _Widget:
    pass


class _Logic:
    def __init__(self, parent=None):
        self.parameterNodes = 0

    def getParameterNode(self):
        self.parameterNodes += 1
        return slicer.vtkMRMLScriptedModuleNode()


@pytest.fixture()
def module(monkeypatch):
    harness = SlicerHarness.shared()
    harness.clear()
    connections = []
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    base.ScriptedLoadableModule, base.ScriptedLoadableModuleLogic = _Module, _Logic
    base.ScriptedLoadableModuleWidget, base.ScriptedLoadableModuleTest = _Widget, unittest.TestCase
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = _wrap
    wrapper.Choice = lambda choices: ("choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("range", low, high)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))  # the feature-map section's collapsible
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setattr(slicer, "mrmlScene", harness.scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
        connect=lambda signal, slot: connections.append((signal, slot)),
        applicationLogic=lambda: harness.appLogic, processEvents=lambda: None), raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        volumerendering=types.SimpleNamespace(logic=lambda: harness.vrLogic)), raising=False)
    spec = importlib.util.spec_from_file_location("XAIExplain", MODULE_DIR / "XAIExplain.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    loaded.connections = connections
    loaded.harness = harness
    yield loaded
    harness.clear()


def test_module_metadata_and_sample_data_registration(module, monkeypatch):
    parent = types.SimpleNamespace()
    module.XAIExplain(parent)
    assert parent.title == "XAIExplain" and parent.categories == ["Quantification"]
    assert "Grad-CAM" in parent.helpText and "Selvaraju" in parent.acknowledgementText
    assert module.connections == [("startupCompleted()", module.registerSampleData)]

    registered = {}
    sample = types.ModuleType("SampleData")
    sample.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.update(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample)
    module.registerSampleData()
    assert registered["category"] == "XAIExplain" and registered["sampleName"] == "SynthLesion"
    assert Path(registered["thumbnailFileName"]).is_file() and callable(registered["customDownloader"])


def test_parameter_node_fields_have_typed_defaults(module):
    fields = module.XAIExplainParameterNode.__annotations__
    assert {"inputVolume", "modelPath", "methods", "device", "threshold", "opacity", "showIn3D"} <= set(fields)
    assert module.XAIExplainParameterNode.methods == "gradcam"
    assert module.XAIExplainParameterNode.opacity == display.DEFAULT_OPACITY


def test_console_logic_is_wired_to_the_scene_and_its_logics(module, demo, positive_case):
    logic = module.XAIExplainLogic()
    assert isinstance(logic, ExplainLogicBase)
    harness = module.harness
    assert logic.scene is harness.scene and logic.vrLogic is harness.vrLogic and logic.appLogic is harness.appLogic
    parameters = logic.getParameterNode()
    assert isinstance(parameters, module.XAIExplainParameterNode)
    assert isinstance(parameters.parameterNode, slicer.vtkMRMLScriptedModuleNode) and logic.torchAvailable()
    volume = positive_case.volume
    t1 = volumenodes.addVolumeNode(harness.scene, volume.array[0], "T1", volume=volume)
    logic._models[(logic.demoModelPath(), "cpu")] = demo
    (result,) = logic.process(t1, logic.demoModelPath(), ["gradcam"], target="lesion", device="cpu", show3D=True)
    assert display.isResult(result) and display.volumeRenderingDisplayNode(result).GetVisibility() == 1
    assert harness.sliceLogic.GetSliceCompositeNode().GetForegroundVolumeID() == result.GetID()
    assert np.isfinite(volumenodes.arrayFromNode(result)).all()
