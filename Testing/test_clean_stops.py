"""Clean stops: Ctrl-C during start-up, libraries' console output kept off the terminal, and earlier results in
--out refused or replaced, never mixed with new ones (run as a user runs the command, in new processes where
that is what is tested)."""
from __future__ import annotations

import numpy as np
import pytest

from xaiexplain.cli.main import main
from xaiexplain.core.volume import write_volume
from xaiexplain.protocol import demo_bundle

MODEL = str(demo_bundle())


@pytest.fixture(scope="module")
def world(tmp_path_factory, positive_case):
    """A good case, a corrupt .pt2 and a folder without DICOM."""
    root = tmp_path_factory.mktemp("stops")
    inputs = root / "in"
    inputs.mkdir()
    write_volume(positive_case.volume, inputs / "case.nrrd")
    (inputs / "random.pt2").write_bytes(np.random.default_rng(1).bytes(3000))
    (inputs / "no_dicom").mkdir()
    (inputs / "no_dicom" / "notes.txt").write_text("no images here\n")
    return root


@pytest.mark.parametrize("delay", [0.2, 0.5, 0.8, 1.5, 3.0])
def test_ctrl_c_at_any_moment_of_start_up_is_a_clean_stop(world, delay):
    """Ctrl-C while Python, the package, torch and the model load: one line, exit 130, nothing written."""
    import signal
    import subprocess
    import sys
    import time

    out = world / "runs" / f"ctrl-c-{delay}" / "out"
    out.parent.mkdir(parents=True)
    process = subprocess.Popen([sys.executable, "-m", "xaiexplain", "explain", "--model", MODEL, "--input",
                                str(world / "in" / "case.nrrd"), "--method", "smoothgrad", "--param",
                                "smoothgrad.samples=400", "--out", str(out), "--quiet"],  # still running at 3 s
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err.strip()) == (130, "cancelled: no output was written"), err
    assert list(out.parent.iterdir()) == []


def test_libraries_with_c_cores_load_before_ctrl_c_becomes_an_exception():
    """torch's C++ swallows a KeyboardInterrupt that lands while it loads numpy, and its next import of numpy then
    fails ('cannot load module more than once'): torch, numpy, SimpleITK and MONAI must all be loaded, under
    start-up's exit-at-once handler, before main() turns Ctrl-C into an exception (a new process, as a user runs
    it; the spy reports what is loaded at that moment)."""
    import subprocess
    import sys

    spy = ("import signal, sys\n"
           "real = signal.signal\n"
           "def spy(signum, handler):\n"
           "    if handler is signal.default_int_handler:\n"
           "        print(' '.join(m for m in ('numpy', 'torch', 'SimpleITK', 'monai') if m not in sys.modules))\n"
           "        sys.stdout.flush()\n"
           "    return real(signum, handler)\n"
           "signal.signal = spy\n"
           "sys.argv = ['xaiexplain', 'methods']\n"
           "from xaiexplain.cli.start import run\n"
           "run()\n")
    done = subprocess.run([sys.executable, "-c", spy], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "", f"not loaded yet when Ctrl-C became an exception: {done.stdout}"


def test_libraries_console_output_only_with_verbose(world):
    """torch logs a traceback for a corrupt .pt2 before the engine's own message; ITK warns in C++ about a
    folder without DICOM: a terminal (a new process, as a user runs it) shows them only with --verbose."""
    import subprocess
    import sys

    def run(model, case, *extra):
        argv = [sys.executable, "-m", "xaiexplain", "explain", "--model", model, "--input", str(world / "in" / case),
                "--method", "gradient", "--out", str(world / "runs" / "verbose"), "--quiet", *extra]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and not done.stdout
        return done.stderr.strip().splitlines()

    for model, case, noise in ((str(world / "in" / "random.pt2"), "case.nrrd", "Traceback"),
                               (MODEL, "no_dicom", "GDCMSeriesFileNames")):
        quiet, verbose = run(model, case), run(model, case, "--verbose")
        assert len(quiet) == 1 and quiet[0].startswith("error: "), quiet
        assert verbose[-1] == quiet[0] and any(noise in line for line in verbose[:-1]), verbose


def test_earlier_results_are_refused_or_replaced_never_mixed(world, tmp_path, capfd):
    from xaiexplain.io.outputs import read_results

    out = tmp_path / "out"
    base = ["explain", "--model", MODEL, "--input", str(world / "in" / "case.nrrd"), "--out", str(out), "--quiet",
            "--no-previews"]
    assert main(base + ["--method", "gradcam", "--method", "gradient"]) == 0
    first = sorted(p.name for p in out.iterdir())
    assert main(base + ["--method", "smoothgrad", "--param", "smoothgrad.samples=2"]) == 2
    assert "already holds results (3 files" in capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == first
    (out / "notes.txt").write_text("mine")  # not a result: left alone
    assert main(base + ["--method", "smoothgrad", "--param", "smoothgrad.samples=2", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "smoothgrad.nrrd", "summary.json"]
    assert [r.method for r in read_results(out)] == ["smoothgrad"]


def test_an_out_folder_without_write_permission_is_refused_before_any_pass(world, tmp_path, capfd, monkeypatch):
    """Permission bits never refuse root (CI), so the one call that asks them is answered 'no' here."""
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(locked)
                        else real(path, mode, **kw))
    argv = ["explain", "--model", MODEL, "--input", str(world / "in" / "case.nrrd"), "--method", "smoothgrad",
            "--out", str(locked / "out"), "--quiet"]
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err == f"error: cannot write the output folder {locked / 'out'}: {locked} is not a writable folder. " \
                  "Choose a folder you can write to."
    assert list(locked.iterdir()) == []
