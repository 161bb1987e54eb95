"""Cohort throughput: cases per minute of ``xaiexplain cohort`` against one ``xaiexplain explain`` process per
case, on the same SynthLesion cases, side by side in one run.

    python benchmarks/bench_cohort.py                       # 12 cases; one process, 2 workers, Ray (2 actors)
    python benchmarks/bench_cohort.py --cases 40 --no-ray

Every way writes the same files per case (checked: the maps of the first case are compared); the ratios are
each way's cases per minute over the per-case processes'. Ray runs on a one-machine cluster started here
(127.0.0.1 only, stopped at the end).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xaiexplain.core.volume import read_volume, write_volume
from xaiexplain.protocol import demo_bundle, map_file
from xaiexplain.synthlesion.synth import generate_case

METHODS = ["--method", "gradient", "--method", "gradcam", "--method", "integrated-gradients",
           "--param", "integrated-gradients.steps=16"]
COMMON = ["--model", str(demo_bundle()), *METHODS, "--no-previews", "--quiet"]


def _cases(folder: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        write_volume(generate_case(20_000 + i).volume, folder / f"c{i}.nrrd")
        rows.append([f"case{i:03d}", str(folder / f"c{i}.nrrd")])
    path = folder / "cases.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["case", "input"], *rows])
    return path


def _timed(command: list[str], env=None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xaiexplain", *command], check=True, capture_output=True,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    listing = _cases(folder, args.cases)
    seconds = {"explain, a process per case": sum(
        _timed(["explain", "--input", str(folder / f"c{i}.nrrd"), "--out", str(folder / "single" / f"case{i:03d}"),
                *COMMON]) for i in range(args.cases))}
    ways = {"cohort, this process": [], f"cohort, {args.workers} worker processes": ["--workers", str(args.workers)]}
    if not args.no_ray:
        ways[f"cohort, Ray ({args.workers} actors)"] = ["--workers", str(args.workers), "--ray", "local"]
    for number, (name, extra) in enumerate(ways.items()):
        out = folder / f"cohort{number}"
        seconds[name] = _timed(["cohort", "--cases", str(listing), "--out", str(out), *COMMON, *extra])
        for method in ("gradient", "integrated-gradients"):
            a = read_volume(out / "case000" / map_file(method)).array
            b = read_volume(folder / "single" / "case000" / map_file(method)).array
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max())), f"{name}: {method} differs"
    base = args.cases / seconds["explain, a process per case"] * 60
    print(f"{args.cases} SynthLesion cases (64^3), gradient + Grad-CAM + integrated gradients (16 steps), "
          f"{os.cpu_count()} CPUs")
    print(f"{'way':34} {'seconds':>8} {'cases/min':>10} {'x per-case processes':>21}")
    for name, value in seconds.items():
        rate = args.cases / value * 60
        print(f"{name:34} {value:8.1f} {rate:10.1f} {rate / base:21.2f}")


if __name__ == "__main__":
    main()
