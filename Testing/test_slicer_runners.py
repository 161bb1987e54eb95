"""One request, both runners: in Slicer's process and in a worker (the engine's command line), the same nodes.

The demo classifier on the SynthLesion sample (headless Slicer), with and without regions: the
maps, their geometry, their tags and records, and the region tables must not depend on where
the run went. Only the wall-clock timings and where the labels came from (a node or a file) may.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from XAIExplainLib import display, regions, sampledata, volumenodes  # noqa: E402
from XAIExplainLib.logic import ExplainLogicBase  # noqa: E402

RUNNER_DEPENDENT = {("timings",), ("info", "regions", "source")}  # wall time; 'labels:<file>' vs a node's


@pytest.fixture()
def logic(harness, demo):
    harness.clear()
    logic = ExplainLogicBase(harness.scene, vrLogic=harness.vrLogic, python=sys.executable)
    logic._models[(logic.demoModelPath(), "cpu")] = demo  # the session's loaded demo model, in-process
    yield logic
    harness.clear()


def assert_same(a, b, path=()):
    """Equal JSON-like records; floats within a float32 map's rounding."""
    if path in RUNNER_DEPENDENT:
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(set(a) ^ set(b)))
        for key in a:
            assert_same(a[key], b[key], path + (key,))
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, path + (i,))
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


def run_both_ways(logic, brain, methods, **kwargs):
    runs = {}
    for useWorker in (False, True):
        runs[useWorker] = logic.process(brain, logic.demoModelPath(), methods, target="lesion", device="cpu",
                                        useWorker=useWorker, **kwargs)
        assert logic.runner.inProcess is not useWorker and logic.status == "done"
    return runs[False], runs[True]


def assert_same_nodes(inProcess, worker, brain):
    assert len(inProcess) == len(worker)
    for a, b in zip(inProcess, worker):
        for node in (a, b):
            assert volumenodes.sameGrid(node, brain, tolerance=1e-9)  # the first input's exact grid
            assert node.GetTransformNodeID() == brain.GetTransformNodeID()
            assert node.GetNodeReference(display.INPUT_REFERENCE) is brain
        mapA, mapB = volumenodes.arrayFromNode(a), volumenodes.arrayFromNode(b)
        assert mapA.dtype == mapB.dtype == np.float32
        assert np.allclose(mapA, mapB, rtol=0, atol=1e-5 * float(np.abs(mapA).max()))
        for attribute in ("method", "signed"):
            assert a.GetAttribute(display.PREFIX + attribute) == b.GetAttribute(display.PREFIX + attribute)
        assert float(a.GetAttribute(display.PREFIX + "displayMax")) == pytest.approx(
            float(b.GetAttribute(display.PREFIX + "displayMax")), rel=1e-4)
        assert_same(display.record(a), display.record(b))


def test_the_same_request_in_process_and_in_a_worker(logic):
    brain, _ = logic.loadSampleData()
    inProcess, worker = run_both_ways(logic, brain, ["gradient", "gradcam"])
    assert [display.record(n)["method"] for n in worker] == ["gradient", "gradcam"]
    assert_same_nodes(inProcess, worker, brain)
    assert all(logic.regionTable(n) is None for n in inProcess + worker)


def test_the_same_request_with_regions_in_process_and_in_a_worker(logic):
    from xaiexplain.synthlesion.synth import generate_case, region_names

    brain, _ = logic.loadSampleData()
    case = generate_case(sampledata.SAMPLE_SEED, positive=True)  # the sample's atlas labels, on its grid
    labels = volumenodes.addVolumeNode(logic.scene, case.labels.array[0], "atlas", reference=brain,
                                       className="vtkMRMLLabelMapVolumeNode")
    labels.CreateDefaultDisplayNodes()
    colours = regions.addRegionColorTable(logic.scene, region_names(), "atlas names")
    labels.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    inProcess, worker = run_both_ways(logic, brain, ["gradient"], regions=labels)
    assert_same_nodes(inProcess, worker, brain)
    (a,), (b,) = inProcess, worker
    tableA, tableB = logic.regionTable(a), logic.regionTable(b)
    rowsA, rowsB = regions.regionRowsFromTable(tableA), regions.regionRowsFromTable(tableB)
    assert len(rowsA) > 20 and [(r.id, r.name, r.rank) for r in rowsA] == [(r.id, r.name, r.rank) for r in rowsB]
    for x, y in zip(rowsA, rowsB):
        assert x.volume_ml == pytest.approx(y.volume_ml) and x.score == pytest.approx(y.score, rel=1e-4, abs=1e-6)
    # both link the user's label map, its colours untouched
    assert tableA.GetNodeReference(regions.LABELS_REFERENCE) is labels
    assert tableB.GetNodeReference(regions.LABELS_REFERENCE) is labels
    assert labels.GetDisplayNode().GetColorNode() is colours
