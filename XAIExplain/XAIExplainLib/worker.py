"""A worker process whose output lines become progress reports, and which Cancel stops for good.

Slicer's GUI must never freeze: the engine runs in a child process (``PythonSlicer``
running the engine's command line), the child's stdout is read by a thread into a
queue, and the GUI drains the queue from a timer with :meth:`WorkerProcess.poll`
(the console can block with :meth:`WorkerProcess.wait`). Callbacks always run in
the thread that calls ``poll``/``wait``. Cancel kills the child and everything
it started (data loaders, compilers), not just the direct child.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def pythonSlicerExecutable() -> str:
    """Slicer's ``PythonSlicer`` (same Python and packages as the application), else this interpreter."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path(sys.executable).parent.parent / "bin"):
        for name in ("PythonSlicer", "PythonSlicer.exe"):
            if (folder / name).is_file():
                return str(folder / name)
    return sys.executable


def killProcessTree(process: subprocess.Popen, grace: float = 3.0) -> None:
    """Terminate the child's whole process group (POSIX) or tree (Windows); kill what is left after ``grace`` s."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader: kill stragglers too
        except ProcessLookupError:
            pass
    process.wait()


class WorkerProcess:
    """Run ``command``; report progress lines to ``onProgress(fraction, message)`` and others to ``onLog(line)``.

    ``popen`` is injectable (tests, or a launcher that wraps the command).
    """

    def __init__(self, command: list[str], *, env: dict | None = None, cwd=None, onProgress=None, onLog=None,
                 popen=subprocess.Popen):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.onProgress = onProgress
        self.onLog = onLog
        self._popen = popen
        self.process = None
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.log: list[str] = []
        self.cancelled = False
        self._reader = None
        self._eof = False

    def start(self) -> "WorkerProcess":
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own process group: Cancel can kill the whole tree
        self.process = self._popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, text=True,
                                   encoding="utf-8", errors="replace", bufsize=1, **options)
        self._reader = threading.Thread(target=self._read, name="xaiexplain-worker-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)

    def _drain(self, timeout: float | None = None) -> None:
        from xaiexplain.protocol import parse_progress_line  # the format's one definition (torch-free)

        while True:
            try:
                line = self.lines.get(timeout=timeout) if timeout else self.lines.get_nowait()
            except queue.Empty:
                return
            timeout = None
            if line is None:
                self._eof = True
                return
            progress = parse_progress_line(line)
            if progress is not None:
                if self.onProgress is not None:
                    self.onProgress(*progress)
            elif line.strip():
                self.log.append(line)
                if self.onLog is not None:
                    self.onLog(line)

    def poll(self) -> int | None:
        """Handle the lines that arrived; the exit code once the process has ended and its output is read."""
        if self.process is None:
            raise RuntimeError("the worker has not been started")
        self._drain()
        if self.process.poll() is None or not self._eof:
            return None
        return self.process.returncode

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> int:
        """Block (handling lines as they come) until the process ends; TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not finish within {timeout} s")
            self._drain(interval)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self) -> None:
        """Stop the process and all its children now."""
        self.cancelled = True
        if self.process is not None:
            killProcessTree(self.process)
            if self._reader is not None:
                self._reader.join(5)
            self._drain()

    def errorMessage(self) -> str:
        """The engine's one-line error if it printed one, else the last lines of its output."""
        for line in reversed(self.log):
            if line.startswith("error: "):
                return line[len("error: "):]
        return "\n".join(self.log[-5:]) or f"the worker exited with code {self.process.returncode}"
