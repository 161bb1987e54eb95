"""Cohorts on worker processes and on a Ray cluster: a worker killed mid-run costs nothing but its case's time.

Each test runs the command in a child process, waits until a worker has started a case (its manifest record
says running, with the worker's pid), kills that worker, and checks that every case finished exactly once,
with the maps a single ``xaiexplain explain`` writes, and that a rerun does no work."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cohort_data import log_events, same_maps, write_cohort

from xaiexplain.cli.main import main
from xaiexplain.protocol import demo_bundle

CLEAN = str(demo_bundle("synthlesion_classifier"))
METHODS = ["--method", "gradient", "--method", "integrated-gradients", "--param", "integrated-gradients.steps=16"]
# a one-machine Ray cluster on 127.0.0.1 only, without the token a local cluster may have left in ~/.ray
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def _start(cases: Path, out: Path, *extra, env=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "xaiexplain", "cohort", "--model", CLEAN, "--cases", str(cases), *METHODS,
               "--no-previews", "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _kill_a_running_worker(out: Path, run: subprocess.Popen, timeout: float = 240) -> str:
    """Kill the first worker found explaining a case; returns that case's id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        for path in (out / "manifest").glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue  # being replaced
            if record.get("status") == "running" and record["pid"] != run.pid:
                os.kill(record["pid"], signal.SIGKILL)
                return record["case"]
        time.sleep(0.02)
    raise AssertionError(f"no worker was seen running a case: {run.communicate(timeout=60)}")


def _run_killing_a_worker(cases: Path, out: Path, *extra, env=None) -> tuple[str, str]:
    """The command run to its end, one of its workers killed on the way: (the killed worker's case, stdout)."""
    run = _start(cases, out, *extra, env=env)
    try:
        killed = _kill_a_running_worker(out, run)
        stdout, stderr = run.communicate(timeout=500)
    finally:
        run.kill()
    assert run.returncode == 0, stderr
    return killed, stdout


def _finished_once(out: Path, n: int, killed: str) -> None:
    events = log_events(out)
    done = sorted(e["case"] for e in events if e["event"] == "done")
    assert done == [f"case{i:02d}" for i in range(n)]  # every case done, none twice
    assert [e["case"] for e in events if e["event"] == "worker died"] == [killed]
    assert json.loads((out / "manifest" / f"{killed}.json").read_text())["attempt"] == 2
    leftovers = list((out / ".cases").glob("*")) if (out / ".cases").exists() else []
    assert leftovers == []  # no staging left behind


def _same_as_explain(tmp_path: Path, out: Path, cases: list[str]) -> None:
    for case in cases:
        single = tmp_path / f"single-{case}"
        number = int(case[4:])
        assert main(["explain", "--model", CLEAN, "--input", str(tmp_path / "data" / f"c{number}.nrrd"), *METHODS,
                     "--no-previews", "--out", str(single), "--quiet"]) == 0
        for method in ("gradient", "integrated-gradients"):
            same_maps(out / case, single, method)


def _rerun_does_no_work(cases: Path, out: Path, *extra, env=None) -> None:
    before = len(log_events(out))
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("case*/*")}
    stdout, stderr = _start(cases, out, *extra, env=env).communicate(timeout=300)
    assert "0 cases explained" in stdout, stderr
    assert len(log_events(out)) == before
    assert {p: p.stat().st_mtime_ns for p in out.glob("case*/*")} == stamps


def test_local_workers_survive_a_killed_worker(tmp_path):
    cases = write_cohort(tmp_path, 4, labels=False)
    out = tmp_path / "run"
    killed, stdout = _run_killing_a_worker(cases, out, "--workers", "2")
    assert "4 cases explained, 0 already finished, 0 failed (1 lost with a worker and run again)" in stdout
    _finished_once(out, 4, killed)
    _same_as_explain(tmp_path, out, [killed])
    _rerun_does_no_work(cases, out, "--workers", "2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_cluster():
    """A Ray head on this machine (2 CPUs, no dashboard, 127.0.0.1 only), stopped at the end."""
    pytest.importorskip("ray")
    ray = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    env = {**os.environ, **LOOPBACK}
    subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=180, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120, env=env)


def _listening_ports(pid: int) -> set[str]:
    """The local addresses a process listens on (TCP, from /proc)."""
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
              if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(fields[1].split(":")[0])
    return found


def _ray_servers() -> dict[int, set[str]]:
    """{pid: the addresses it listens on} of the Ray cluster's servers (GCS and raylet)."""
    found = {}
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(name in path.read_bytes() for name in (b"gcs_server", b"raylet")):
                found[int(path.parent.name)] = _listening_ports(int(path.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_a_ray_cluster_runs_every_case_once_when_a_worker_dies(tmp_path, ray_cluster):
    cases = write_cohort(tmp_path, 6, labels=False)
    out = tmp_path / "run"
    extra = ("--workers", "2", "--ray", ray_cluster)
    killed, stdout = _run_killing_a_worker(cases, out, *extra, env=LOOPBACK)
    assert "6 cases explained, 0 already finished, 0 failed (1 lost with a worker and run again)" in stdout
    _finished_once(out, 6, killed)
    pids = {json.loads(p.read_text())["pid"] for p in (out / "manifest").glob("*.json")}
    assert len(pids) >= 2  # the cases were spread over the actors
    _same_as_explain(tmp_path, out, [f"case{i:02d}" for i in range(6)])
    _rerun_does_no_work(cases, out, *extra, env=LOOPBACK)
    stdout, stderr = _start(cases, tmp_path / "gpus", *extra, "--gpus-per-worker", "1",
                            env=LOOPBACK).communicate(timeout=300)
    assert "--gpus-per-worker 1 was asked but the Ray cluster has 0 GPUs" in stderr
    assert not (tmp_path / "gpus").exists()  # refused before anything was written
    # the cluster's servers listen on the loopback address only
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as /proc/net/tcp and tcp6 write it
    servers = _ray_servers()
    assert servers and all(ports <= loopback for ports in servers.values())
