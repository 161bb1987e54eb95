"""The worker process: progress lines, exit codes, Cancel killing the whole tree, and the engine CLI run for real."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from xaiexplain.protocol import parse_progress_line as parseProgressLine  # noqa: E402
from XAIExplainLib import display, regions, runners, volumenodes  # noqa: E402
from XAIExplainLib.request import ExplainRequest  # noqa: E402
from XAIExplainLib.results import addResultNodes  # noqa: E402
from XAIExplainLib.worker import WorkerProcess  # noqa: E402


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_progress_lines():
    assert parseProgressLine('xaiexplain-progress {"fraction": 0.25, "message": "gradcam"}') == (0.25, "gradcam")
    assert parseProgressLine("prediction: lesion (p=0.99)") is None
    assert parseProgressLine("xaiexplain-progress not json") is None


def test_cli_prints_progress_lines(capsys):
    from xaiexplain.cli.main import ProgressLines

    ProgressLines()(0.5, "half way")
    assert parseProgressLine(capsys.readouterr().out.strip()) == (0.5, "half way")


def test_cli_progress_lines_and_no_previews(tmp_path, positive_case, capsys):
    """The engine's side of the worker protocol: parseable progress on stdout, no PNG when asked."""
    from xaiexplain import write_volume
    from xaiexplain.cli.main import main
    from xaiexplain.protocol import demo_bundle

    image = write_volume(positive_case.volume, tmp_path / "case.nrrd")
    assert main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "gradcam",
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--progress-lines", "--no-previews"]) == 0
    captured = capsys.readouterr()
    progress = [parseProgressLine(line) for line in captured.out.splitlines() if parseProgressLine(line)]
    assert progress[0][0] == 0.0 and progress[-1] == (1.0, progress[-1][1]) and "gradcam" in progress[0][1]
    assert "\r" not in captured.err  # no progress bar drawn
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gradcam.nrrd", "summary.json"]


def test_worker_reports_progress_then_log_and_exit_code():
    script = textwrap.dedent("""
        import json, sys
        for i in range(4):
            print("xaiexplain-progress " + json.dumps({"fraction": i / 3, "message": f"step {i}"}), flush=True)
        print("a log line")
        print("error: the model failed. Check the input", flush=True)
        sys.exit(2)
    """)
    progress, log = [], []
    worker = WorkerProcess([sys.executable, "-c", script], onProgress=lambda f, m: progress.append((f, m)),
                           onLog=log.append).start()
    assert worker.wait(30) == 2
    assert [f for f, _ in progress] == pytest.approx([0, 1 / 3, 2 / 3, 1]) and progress[-1][1] == "step 3"
    assert log == ["a log line", "error: the model failed. Check the input"]
    assert worker.errorMessage() == "the model failed. Check the input"


def test_cancel_kills_the_whole_process_tree(tmp_path):
    # the child starts a grandchild (as data loaders do), reports both pids, then works "forever"
    script = textwrap.dedent("""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("pids", grandchild.pid, flush=True)
        time.sleep(120)
    """)
    lines = []
    worker = WorkerProcess([sys.executable, "-c", script], onLog=lines.append).start()
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        worker.poll()
        time.sleep(0.05)
    assert lines, "the child did not start"
    grandchild = int(lines[0].split()[1])
    child = worker.process.pid
    assert alive(child) and alive(grandchild)
    start = time.monotonic()
    worker.cancel()
    assert time.monotonic() - start < 10
    for _ in range(50):
        if not alive(grandchild):
            break
        time.sleep(0.1)
    assert not alive(child) and not alive(grandchild)
    assert worker.cancelled and not worker.running


def test_job_failure_leaves_no_folder_and_no_nodes(scene, tmp_path):
    """The job's error path, with the command swapped for a child that fails as the engine does (injected popen)."""
    node = volumenodes.addVolumeNode(scene, np.random.default_rng(0).random((8, 9, 10), dtype=np.float32), "in")
    seen = {}

    def popen(command, **kwargs):
        seen["command"] = command
        fail = "print('error: unknown method \\'nope\\'. Choose one of: gradient', flush=True); raise SystemExit(2)"
        return subprocess.Popen([sys.executable, "-c", fail], **kwargs)

    before = scene.GetNumberOfNodes()
    request = ExplainRequest([node], "model-folder", ["nope"], target="lesion", params={"smoothgrad": {"samples": 5}})
    run = runners.WorkerRunner(scene, request, python="PythonSlicer", popen=popen, tempRoot=tmp_path).start()
    folder = run.tempDir
    assert (folder / "input0.nrrd").exists()
    with pytest.raises(RuntimeError, match="unknown method 'nope'"):
        run.wait(30)
    assert run.status == "failed" and not folder.exists()
    assert scene.GetNumberOfNodes() == before
    command = seen["command"]
    assert command[0] == "PythonSlicer" and command[1] == "-c" and command[3] == "explain"
    assert str(runners.ENGINE_PARENT) in command[2] and "xaiexplain.cli.main import main" in command[2]
    assert command[command.index("--target") + 1] == "lesion"
    assert "smoothgrad.samples=5" in command and "--progress-lines" in command
    assert command[command.index("--out") + 1] == str(folder / "out")


def test_request_validation(scene):
    with pytest.raises(ValueError, match="input volume"):
        runners.WorkerRunner(scene, ExplainRequest([], "m", ["gradcam"]))
    with pytest.raises(ValueError, match="method"):
        runners.InProcessRunner(scene, ExplainRequest([object()], "m", []))


def test_engine_cli_in_a_worker_process(scene, positive_case, demo, tmp_path):
    """The real thing: the engine CLI as a child process on the demo model; the map equals the in-process one."""
    from xaiexplain import explain
    from xaiexplain.protocol import demo_bundle

    volume = positive_case.volume
    node = volumenodes.addVolumeNode(scene, volume.array[0], "T1", volume=volume)
    progress = []
    request = ExplainRequest([node], str(demo_bundle()), ["gradcam"], target="lesion", device="cpu")
    run = runners.WorkerRunner(scene, request, python=sys.executable, onProgress=lambda f, m: progress.append((f, m)),
                               tempRoot=tmp_path).start()
    folder = run.tempDir
    nodes = addResultNodes(scene, run.wait(300), request)
    assert run.status == "done" and not folder.exists()
    fractions = [f for f, _ in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert "gradcam" in progress[0][1]
    (result,) = nodes
    assert result.GetName() == "T1 gradcam" and display.isResult(result) and not display.isSigned(result)
    assert volumenodes.sameGrid(result, node, tolerance=1e-9)
    assert result.GetNodeReference(display.INPUT_REFERENCE) is node
    record = display.record(result)
    assert record["target"]["name"] == "lesion" and record["prediction"]["predicted_name"] == "lesion"
    expected = explain(demo, volume, ["gradcam"], target="lesion", device="cpu")[0].array
    assert np.allclose(volumenodes.arrayFromNode(result)[0], expected, atol=1e-5 * float(np.abs(expected).max()))


def test_loaded_results_bring_the_engine_region_labels(scene, positive_case, demo, tmp_path):
    """An output folder with regions.csv and regions.nrrd (as the CLI writes them for --atlas or --regions)
    becomes a result with its region table and a label map of the regions in the subject."""
    from xaiexplain import explain
    from xaiexplain.io.outputs import read_results, write_results
    from xaiexplain.synthlesion.synth import region_names

    volume = positive_case.volume
    names = {k: v for k, v in region_names().items() if k in set(np.unique(positive_case.labels.array))}
    results = explain(demo, volume, ["gradient"], target="lesion", device="cpu", regions=positive_case.labels,
                      region_names=names)
    write_results(tmp_path / "out", volume, results, previews=False)
    node = volumenodes.addVolumeNode(scene, volume.array[0], "T1", volume=volume)
    (result,) = addResultNodes(scene, read_results(tmp_path / "out"), ExplainRequest([node], "m", ["gradient"]))
    table = result.GetNodeReference(regions.REGIONS_REFERENCE)
    labels = table.GetNodeReference(regions.LABELS_REFERENCE)
    assert labels is not None and labels.IsA("vtkMRMLLabelMapVolumeNode")
    assert volumenodes.sameGrid(labels, node, tolerance=1e-6)
    assert np.array_equal(volumenodes.arrayFromNode(labels)[0], positive_case.labels.array[0])
    colours = labels.GetDisplayNode().GetColorNode()
    top = results[0].regions[0]
    assert colours.GetColorName(int(top["id"])) == top["name"]


@pytest.mark.slow
def test_cancelling_the_engine_cli(scene, positive_case, tmp_path):
    from xaiexplain.protocol import demo_bundle

    node = volumenodes.addVolumeNode(scene, positive_case.volume.array[0], "T1", volume=positive_case.volume)
    progress = []
    request = ExplainRequest([node], str(demo_bundle()), ["smoothgrad"], params={"smoothgrad": {"samples": 400}})
    run = runners.WorkerRunner(scene, request, python=sys.executable, onProgress=lambda f, m: progress.append(f),
                               tempRoot=tmp_path).start()
    folder, before = run.tempDir, scene.GetNumberOfNodes()
    deadline = time.monotonic() + 240
    while len(progress) < 2 and time.monotonic() < deadline:  # working: past the estimate line
        assert run.poll() == "running"
        time.sleep(0.1)
    run.cancel()
    assert run.status == "cancelled" and not folder.exists() and not run.worker.running
    assert scene.GetNumberOfNodes() == before
