"""The module's self-test in a running Slicer (Reload and Test): the SynthLesion sample and the demo model,
in-process and in a worker process, then the trust card of a map. ``test`` is the ScriptedLoadableModuleTest
(its delayDisplay and asserts), ``logic`` a fresh XAIExplainLogic."""
from __future__ import annotations

import slicer

from . import display, trust, volumenodes


def inProcess(test, logic) -> None:
    test.delayDisplay("Grad-CAM of the demo classifier on the SynthLesion sample")
    test.assertTrue(logic.ensureDependencies(confirm=lambda message: True))
    brain, lesion = logic.loadSampleData()
    (result,) = logic.process(brain, logic.demoModelPath(), ["gradcam"], target="lesion", device="cpu", show3D=True)
    test.assertTrue(display.isResult(result))
    test.assertTrue(volumenodes.sameGrid(result, brain, tolerance=1e-6))  # the input's dimensions and IJK-to-RAS
    composite = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
    test.assertEqual(composite.GetForegroundVolumeID(), result.GetID())
    test.assertEqual(display.record(result)["prediction"]["predicted_name"], "lesion")
    logic.setThreshold(result, 0.5 * float(result.GetAttribute(display.PREFIX + "displayMax")))
    test.assertIsNotNone(display.volumeRenderingDisplayNode(result))
    slicer.util.forceRenderAllViews()
    test.delayDisplay("In-process run passed")


def workerProcess(test, logic) -> None:
    test.delayDisplay("SmoothGrad in a worker process (PythonSlicer running the engine's command line)")
    brain, lesion = logic.loadSampleData()
    progress = []
    (result,) = logic.process(brain, logic.demoModelPath(), ["smoothgrad"], target="lesion", device="cpu",
                              params={"smoothgrad": {"samples": 4}}, useWorker=True,
                              progressCallback=lambda fraction, message: progress.append(fraction))
    test.assertTrue(display.isSigned(result))
    test.assertEqual(progress[-1], 1.0)
    test.assertEqual(result.GetNodeReference(display.INPUT_REFERENCE), brain)
    test.assertIsNone(logic.regionTable(result))
    test.delayDisplay("Trust card of the map, in the worker")
    logic.checkResult(result, ["deletion", "shortcut"], {"deletion": {"steps": 5, "random_maps": 1}})
    test.assertIn(trust.trustCard(result)["verdict"], ("pass", "inconclusive", "fail"))
    test.assertTrue(logic.showCurves(result))
    test.assertFalse(logic.isRunning())
    test.delayDisplay("Worker run passed")
