"""Cohorts from Slicer's logic: a run in a worker process, the cases it recorded, a case's results as nodes."""
from __future__ import annotations

import numpy as np
import pytest
from cohort_data import LESION_REGION, write_cohort

from xaiexplain.core.volume import read_volume


def test_the_logic_runs_a_cohort_and_loads_a_case(logic, tmp_path):
    from XAIExplainLib.volumenodes import arrayFromNode

    cases = write_cohort(tmp_path, 2)
    with open(cases, "a") as handle:
        handle.write("broken,data/absent.nrrd,data/c0_labels.nrrd,plain\n")
    out = tmp_path / "run"
    seen = []
    findings = logic.runCohort(cases, logic.demoModelPath(), ["gradient"], out,
                               arguments=["--region-names", tmp_path / "names.csv", "--no-previews"],
                               progressCallback=lambda fraction, message: seen.append(fraction))
    assert findings["cases"] == 2 and list(findings["failed"]) == ["broken"]  # a failed case does not stop it
    assert findings["methods"]["gradient"]["regions"]["all cases"][0]["region"] == LESION_REGION
    assert seen and seen[-1] == 1.0
    records = {r["case"]: r["status"] for r in logic.cohortCases(out)}
    assert records == {"case00": "done", "case01": "done", "broken": "failed"}

    nodes = logic.loadCohortCase(out, "case01")
    assert [n.GetAttribute("XAIExplain.method") for n in nodes] == ["gradient"]
    np.testing.assert_allclose(arrayFromNode(nodes[0]), read_volume(out / "case01" / "gradient.nrrd").array, rtol=1e-6)
    inputs = [logic.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
              for i in range(logic.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    image = next(n for n in inputs if n.GetName() == "case01")  # the case's input, read from its file
    np.testing.assert_allclose(arrayFromNode(image), read_volume(tmp_path / "data" / "c1.nrrd").array)
    assert logic.regionTable(nodes[0]) is not None  # the case's region table came with it

    with pytest.raises(RuntimeError, match="holds a cohort run with other settings"):
        logic.runCohort(cases, logic.demoModelPath(), ["gradcam"], out, arguments=["--region-names",
                                                                                  tmp_path / "names.csv"])
