"""LRP and DeepLIFT: time and peak memory divided by one forward+backward pass, measured side by side.

    python benchmarks/bench_propagation.py            # demo model + DenseNet121, 64^3 and 128^3, CPU
    python benchmarks/bench_propagation.py --quick    # 64^3 only, fewer repeats
    python benchmarks/bench_propagation.py --device cuda

One pass = forward + backward to the input for the target logit. Time: each method
run alternates with a pass (--repeats pairs after a warm-up) and the median of the
pairwise ratios is reported, so load that comes and goes hits both sides alike.
Peak memory: on CUDA, ``max_memory_allocated`` above the resident model and input;
on the CPU, the growth of the process's peak resident set size while that run
alone executes in a fresh child process. ``--sizes`` takes other cube sizes.
Targets: LRP <= 2x, DeepLIFT <= 2.5x.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch
from monai.networks.nets import DenseNet121

from xaiexplain import attribute, load_model
from xaiexplain.protocol import demo_bundle

RUNS = {"pass": None, "lrp epsilon": ("lrp", {"composite": "epsilon"}),
        "lrp epsilon-plus-flat": ("lrp", {"composite": "epsilon-plus-flat"}),
        "lrp alpha2-beta1": ("lrp", {"composite": "alpha2-beta1"}),
        "deeplift": ("deeplift", {"baseline": "blur"})}


def _model(name, device):
    if name == "demo":
        return load_model(demo_bundle("synthlesion_classifier"), device=device)
    torch.manual_seed(0)
    return load_model(DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval(), device=device)


def _runner(model, x, run):
    if RUNS[run] is None:
        def one_pass():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(model.network(xg)[:, 1].sum(), xg)
        return one_pass
    method, params = RUNS[run]
    with torch.inference_mode():
        reference = model.network(x).float().clone()
    return lambda: attribute(model, x, method, target=1, params=params, reference=reference)


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_child(name, size, run, queue):
    torch.set_num_threads(torch.get_num_threads())
    model = _model(name, "cpu")
    x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    fn = _runner(model, x, run)
    before = _rss_mb()
    fn()
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)


def peak_mb(name, size, run, device):
    if device.type == "cuda":
        model = _model(name, device)
        x = torch.rand(1, 1, size, size, size, device=device)
        fn = _runner(model, x, run)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=_peak_child, args=(name, size, run, queue))
    child.start()
    child.join()
    return queue.get()


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired(fn, base, device, repeats):
    """(median seconds of fn, median seconds of base, median of the pairwise ratios)."""
    fn(), base()
    pairs = [(_timed(fn, device), _timed(base, device)) for _ in range(repeats)]
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            statistics.median(p[0] / p[1] for p in pairs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--models", default="demo,densenet121", help="comma-separated: demo, densenet121")
    parser.add_argument("--sizes", help="comma-separated cube sizes (default 64,128; 64 with --quick)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else (64,) if args.quick else (64, 128)
    rows = []
    for name in args.models.split(","):
        model = _model(name, device)
        for size in sizes:
            x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0)).to(device)
            base = _runner(model, x, "pass")
            base_m = peak_mb(name, size, "pass", device)
            for run in RUNS:
                if run == "pass":
                    continue
                t, base_t, ratio = paired(_runner(model, x, run), base, device, 1 if args.quick else args.repeats)
                m = peak_mb(name, size, run, device)
                rows.append({"model": name, "size": size, "run": run, "seconds": t, "pass_seconds": base_t,
                             "time_ratio": ratio, "peak_mb": m, "pass_peak_mb": base_m,
                             "memory_ratio": m / max(base_m, 1e-6)})
                print(f"{name:12} {size:4}^3 {run:24} {t:8.3f} s {ratio:6.2f} x pass | "
                      f"peak {m:8.1f} MB {m / max(base_m, 1e-6):6.2f} x pass (pass {base_t:.3f} s, {base_m:.1f} MB)",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
