"""Cohorts from Slicer: ``xaiexplain cohort`` in a worker process, and any finished case's results loaded as
result nodes (its input volumes read from the files the case was made from)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .request import ExplainRequest
from .results import addResultNodes
from .runners import LAUNCH_ENGINE, engineEnvironment
from .volumenodes import readVolumeFile
from .worker import WorkerProcess, pythonSlicerExecutable


class CohortRunner:
    """One cohort run in a worker process. ``status``: running, done (every case finished or recorded as failed:
    see ``cohortCases``), failed (the command refused or broke), cancelled."""

    def __init__(self, arguments: list[str], *, python: str | None = None, popen=None, onProgress=None):
        command = [python or pythonSlicerExecutable(), "-c", LAUNCH_ENGINE, "cohort", *arguments, "--progress-lines"]
        kwargs = {} if popen is None else {"popen": popen}
        self.worker = WorkerProcess(command, env=engineEnvironment(), onProgress=onProgress, **kwargs)
        self.status, self.error = "idle", ""
        self.out = Path(arguments[arguments.index("--out") + 1])

    def start(self) -> "CohortRunner":
        self.worker.start()
        self.status = "running"
        return self

    def poll(self) -> str:
        if self.status == "running":
            code = self.worker.poll()
            if code is not None:  # 1: some cases failed, each recorded; the others are done
                self.status = "done" if code in (0, 1) else "failed"
                self.error = "" if code in (0, 1) else self.worker.errorMessage()
        return self.status

    def cancel(self) -> None:
        if self.status == "running":
            self.worker.cancel()
            self.status, self.error = "cancelled", "cancelled"

    def findings(self) -> dict:
        return json.loads((self.out / "findings.json").read_text(encoding="utf-8"))


class CohortLogic:
    """The logic's cohort methods (mixed into ``ExplainLogicBase``)."""

    def runCohort(self, cases, model: str, methods, out, *, workers: int = 1, ray: str | None = None,
                  arguments=(), progressCallback=None, waitForCompletion: bool = True):
        """Explain every case of ``cases`` (a CSV or a folder, as ``xaiexplain cohort --cases``) into ``out``.
        ``arguments``: more command-line options (e.g. ["--atlas", "harvard-oxford", "--check"]). Waits and
        returns the findings (a failure raises), or returns the runner at once (poll it) with
        ``waitForCompletion=False``. A rerun skips the finished cases."""
        command = ["--model", str(model), "--cases", str(cases), "--out", str(out), "--workers", str(workers),
                   *[part for method in methods for part in ("--method", method)], *(["--ray", ray] if ray else []),
                   *map(str, arguments)]
        self.cohortRunner = CohortRunner(command, python=self.python, popen=self.popen,
                                         onProgress=progressCallback).start()
        if not waitForCompletion:
            return self.cohortRunner
        try:
            while self.cohortRunner.poll() == "running":
                time.sleep(0.1)
        finally:
            self.cohortRunner.cancel()  # only if still running (an interrupted wait)
        if self.cohortRunner.status != "done":
            raise RuntimeError(f"the cohort run {self.cohortRunner.status}: {self.cohortRunner.error}")
        return self.cohortRunner.findings()

    def cohortCases(self, out) -> list[dict]:
        """The cases of a cohort folder as its manifest records them (case, status, error, prediction, ...)."""
        from xaiexplain.cohort.manifest import all_records

        return all_records(out)

    def loadCohortCase(self, out, case: str) -> list:
        """A finished case of the cohort in ``out``: its inputs as volume nodes and its maps as result nodes."""
        from xaiexplain.io.outputs import read_results
        from xaiexplain.protocol import read_summary

        folder = Path(out) / case
        summary = read_summary(folder)
        cohort = json.loads((Path(out) / "cohort.json").read_text(encoding="utf-8"))
        inputs = [readVolumeFile(self.scene, path, f"{case}" if i == 0 else f"{case} input{i}")
                  for i, path in enumerate(summary["inputs"])]
        settings = cohort["settings"]["settings"]
        request = ExplainRequest(inputs=inputs, model=cohort["model"], methods=list(settings["methods"]),
                                 target=settings.get("target"), versus=settings.get("versus"),
                                 layer=settings.get("layer"), params=settings.get("params") or {},
                                 seed=settings.get("seed", 0), roi=_keywordRoi(cohort["settings"]["roi"]))
        return addResultNodes(self.scene, read_results(folder), request)


def _keywordRoi(roi):
    """'predicted' or 'component:N' (a request keeps those); a mask file is the case's, not a node here."""
    from xaiexplain.core.targets import is_roi_keyword

    return roi if roi is not None and is_roi_keyword(roi) else None
