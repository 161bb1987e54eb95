"""Time of every method divided by one forward+backward pass, measured side by side in one run.

    python benchmarks/bench_methods.py                 # demo model + DenseNet121 at 64^3 and 96^3, CPU
    python benchmarks/bench_methods.py --device cuda   # the same on a GPU
    python benchmarks/bench_methods.py --quick         # fewer repeats, 64^3 only

One pass = forward + backward to the input (``torch.autograd.grad`` of the target logit with
respect to the input), the cost of a vanilla gradient. The model's prediction is computed once
beforehand and shared, as ``explain()`` shares it between methods. Each time is the median of
--repeats runs after one warm-up. Target: Grad-CAM <= 1.3 passes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from monai.networks.nets import DenseNet121

from xaiexplain import METHODS, attribute, load_model
from xaiexplain.protocol import demo_bundle


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    fn()  # warm-up (allocations, cuDNN autotune)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_pass(model, x, target):
    xg = x.detach().requires_grad_(True)
    torch.autograd.grad(model.network(xg)[:, target].sum(), xg)


def bench(name, model, size, device, repeats, methods):
    x = torch.randn(1, model.in_channels or 1, size, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    base = timed(lambda: one_pass(model, x, 1), device, repeats)
    with torch.inference_mode():
        reference = model.network(x).float().clone()
    rows = []
    for method in methods:
        seconds = timed(lambda: attribute(model, x, method, target=1, reference=reference), device, repeats)
        rows.append({"model": name, "size": size, "method": method, "seconds": seconds, "pass_seconds": base,
                     "ratio": seconds / base, "passes": METHODS[method].cost(METHODS[method].params({}))})
        print(f"{name:12} {size:4}^3 {method:22} {seconds:9.4f} s  {seconds / base:7.2f} x pass "
              f"(pass {base:.4f} s)", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--methods", nargs="+",  # perturbation methods: benchmarks/bench_perturbation.py
                        default=[name for name, m in METHODS.items() if m.family != "perturbation"])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 64^3 only")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.sizes = 1, [64]
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {"demo": load_model(demo_bundle(), device=device),
              "densenet121": load_model(DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval(),
                                        device=device)}
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for name, model in models.items():
        for size in args.sizes:
            rows += bench(name, model, size, device, args.repeats, args.methods)
    worst = max(r["ratio"] for r in rows if r["method"] == "gradcam")
    print(f"Grad-CAM worst ratio: {worst:.2f} x one forward+backward (target <= 1.3): "
          f"{'PASS' if worst <= 1.3 else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0 if worst <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
