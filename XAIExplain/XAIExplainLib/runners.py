"""Two ways to run one :class:`~XAIExplainLib.request.ExplainRequest`, one protocol.

A runner is made with the scene, the request and two callbacks,
``onProgress(fraction, message)`` and ``onFinished(runner)`` (called once, however the
run ends). ``start()`` begins the run, ``poll()`` (a GUI timer) or ``wait()`` (the
console) drive it, ``cancel()`` stops it. A run ends ``done`` with ``attributions``,
the engine's list of :class:`xaiexplain.Attribution`, or ``failed`` (``error``,
``exception``) or ``cancelled``; turning attributions into nodes is
:func:`XAIExplainLib.results.addResultNodes`, the same for both.

- :class:`InProcessRunner` calls ``explain()`` in Slicer's process (quick methods):
  ``start()`` returns when the run has ended; Cancel takes effect at the next batch.
- :class:`WorkerRunner` writes the inputs to a temporary folder, runs the engine's
  command line in a child process (Slicer stays responsive, Cancel kills it at once)
  and reads the output folder back with ``xaiexplain.io.outputs.read_results``.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

from .request import EngineFiles, ExplainRequest
from .volumenodes import volumeFromNode, writeVolumeFile
from .worker import WorkerProcess, pythonSlicerExecutable

ENGINE_PARENT = Path(__file__).resolve().parent.parent  # the folder that holds the xaiexplain package
# The engine is put on sys.path by the command itself: Slicer's launcher may rewrite PYTHONPATH.
LAUNCH_ENGINE = (f"import sys; sys.path.insert(0, {str(ENGINE_PARENT)!r}); "
                 "from xaiexplain.cli.main import main; sys.exit(main())")


class Runner:
    """The protocol both runners follow (see the module docstring)."""

    inProcess = False

    def __init__(self, scene, request: ExplainRequest, *, onProgress=None, onFinished=None):
        request.validate()
        self.scene = scene
        self.request = request
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.case = None  # the request's CaseNodes, once started
        self.attributions: list = []
        self.status = "new"  # new, running, done, failed, cancelled
        self.error = ""
        self.exception: BaseException | None = None

    def start(self) -> "Runner":
        self.status = "running"
        try:
            self.case = self.request.exportNodes(self.scene)
            self._run()
        except Exception as err:  # noqa: BLE001 (a failed run is reported, not half-done)
            if self.status != "running":
                raise  # the onFinished callback's own error, not the run's
            self._finish("failed", error=str(err), exception=err)
        return self

    def poll(self) -> str:
        return self.status

    def wait(self, timeout: float | None = None) -> list:
        """Block until the run ends: its attributions ([] if cancelled); a failure raises."""
        if self.status == "failed":
            raise self.exception if self.exception is not None else RuntimeError(self.error)
        return self.attributions if self.status == "done" else []

    def cancel(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        if self.case is not None:
            self.case.removeTemporary(self.scene)

    def _finish(self, status: str, attributions=(), error: str = "", exception=None) -> None:
        self.status, self.attributions, self.error, self.exception = status, list(attributions), error, exception
        self._cleanup()
        if self.onFinished is not None:
            self.onFinished(self)

    def _progress(self, fraction: float, message: str) -> None:
        if self.onProgress is not None:
            self.onProgress(fraction, message)


class InProcessRunner(Runner):
    """``explain()`` in this process; ``processEvents`` (Slicer's) runs after each report so Cancel stays clickable."""

    inProcess = True

    def __init__(self, scene, request, *, loadModel=None, processEvents=None, **callbacks):
        super().__init__(scene, request, **callbacks)
        self.loadModel = loadModel
        self.processEvents = processEvents
        self._cancelRequested = False

    def _run(self) -> None:
        from xaiexplain import explain, load_model
        from xaiexplain.methods import Cancelled

        case, request = self.case, self.request
        volumes = []
        for node, name in zip(case.inputs, request.channelNames()):
            volume = volumeFromNode(node)
            volume.channel_names = [name]
            volumes.append(volume)
        model = (self.loadModel or (lambda path, device: load_model(path, device=device)))(request.model,
                                                                                          request.device)
        try:
            results = explain(model, volumes, request.methods, target=request.target, versus=request.versus,
                              roi=_asVolume(case.roi), layer=request.layer, params=request.params,
                              seed=request.seed, device=request.device, regions=_asVolume(case.regions),
                              region_names=case.regionNames, inferer=request.inferer, progress=self._progress,
                              cancel=lambda: self._cancelRequested, checks=request.checks,
                              check_settings=request.checkSettings or None)
        except Cancelled:
            self._finish("cancelled", error="cancelled")
            return
        self._finish("done", results)

    def _progress(self, fraction: float, message: str) -> None:
        super()._progress(fraction, message)
        if self.processEvents is not None:
            self.processEvents()

    def cancel(self) -> None:
        if self.status == "running":
            self._cancelRequested = True


def _asVolume(item):
    """A label map node as an engine Volume; "predicted", an atlas name or None as it is."""
    return volumeFromNode(item) if hasattr(item, "IsA") else item


class WorkerRunner(Runner):
    """The engine's command line in a child process (``PythonSlicer``), on files in a temporary folder.

    The folder is removed however the run ends. ``popen`` is injectable (tests, a wrapping launcher).
    """

    def __init__(self, scene, request, *, python: str | None = None, popen=None, tempRoot=None, onLog=None,
                 **callbacks):
        super().__init__(scene, request, **callbacks)
        self.python = python or pythonSlicerExecutable()
        self.popen = popen
        self.tempRoot = tempRoot
        self.onLog = onLog
        self.tempDir: Path | None = None
        self.worker: WorkerProcess | None = None

    def _run(self) -> None:
        self.tempDir = Path(tempfile.mkdtemp(prefix="xaiexplain-", dir=self.tempRoot))
        command = [self.python, "-c", LAUNCH_ENGINE] + self.request.engineArguments(self._writeFiles())
        kwargs = {} if self.popen is None else {"popen": self.popen}
        self.worker = WorkerProcess(command, env=engineEnvironment(), onProgress=self._progress, onLog=self.onLog,
                                    **kwargs).start()

    def _writeFiles(self) -> EngineFiles:
        case, folder = self.case, self.tempDir
        files = EngineFiles([writeVolumeFile(node, folder / f"{name}.nrrd")
                             for node, name in zip(case.inputs, self.request.channelNames())], folder / "out")
        if case.roi == "predicted":
            files.roi = "predicted"
        elif case.roi is not None:
            files.roi = writeVolumeFile(case.roi, folder / "roi.nrrd")
        if case.regionLabels is not None:
            files.regions = writeVolumeFile(case.regionLabels, folder / "regions-in.nrrd")
            files.regionNames = folder / "region-names.csv"
            with open(files.regionNames, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "name"])
                writer.writerows(sorted(case.regionNames.items()))
        else:
            files.regions = case.regions  # an atlas name, or None
        return files

    def poll(self) -> str:
        """Handle what the worker reported; at its end read the output folder back."""
        if self.status != "running" or self.worker is None:
            return self.status
        code = self.worker.poll()
        if code is None:
            return self.status
        if code != 0:
            message = self.worker.errorMessage()
            self._finish("failed", error=message, exception=RuntimeError(message))
            return self.status
        try:
            from xaiexplain.io.outputs import read_results

            attributions = read_results(self.tempDir / "out")
        except Exception as err:  # noqa: BLE001 (reported to the user, never half-loaded)
            self._finish("failed", error=str(err), exception=err)
            return self.status
        self._finish("done", attributions)
        return self.status

    def wait(self, timeout: float | None = None) -> list:
        if self.status == "running":
            try:
                self.worker.wait(timeout)
            except TimeoutError:
                self.cancel()
                raise
            self.poll()
        return super().wait()

    def cancel(self) -> None:
        if self.status == "running":
            if self.worker is not None:
                self.worker.cancel()
            self._finish("cancelled", error="cancelled")

    def _cleanup(self) -> None:
        super()._cleanup()
        if self.tempDir is not None:
            shutil.rmtree(self.tempDir, ignore_errors=True)


def engineEnvironment(base: dict | None = None) -> dict:
    """The child's environment: the engine beside this package importable, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env
