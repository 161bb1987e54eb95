"""Sliding-window explanation at full scan size: time and peak memory, ours against a whole-volume graph.

Each measurement runs in its own process (peak resident memory read from the kernel). ``ours``: the
engine's ``explain`` (gradient of a class over a region, through a MONAI SegResNet's sliding windows: one
window's graph at a time, only the region's windows); ``graph``: the same gradient by autograd through
``monai.inferers.sliding_window_inference``, which keeps every window's graph until the backward pass.
Both include the prediction itself (every window, once). Printed: seconds, peak GB, graph / ours.

    python benchmarks/bench_windows.py                 # 160^3 both ways, then a 512 x 512 x 300 CT, ours
    python benchmarks/bench_windows.py --sizes 96 96 96 --no-ct
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

ROI = [96, 96, 96]


def network(name: str = "segresnet"):
    import torch
    from monai.networks.nets import SegResNet, UNet

    torch.manual_seed(0)
    if name == "unet":
        return UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8).eval()


def region(shape):
    """A 48^3 'organ' near the volume's centre (as numpy z, y, x is reversed: a mask on the I, J, K grid)."""
    import numpy as np

    mask = np.zeros(shape, np.float32)
    centre = [s // 2 for s in shape]
    mask[tuple(slice(c - 24, c + 24) for c in centre)] = 1
    return mask


def measure(tool: str, shape: list[int], name: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    net = network(name)
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    mask = region(shape)
    start = time.perf_counter()
    if tool == "ours":
        from xaiexplain import load_model
        from xaiexplain.core.explain import explain
        from xaiexplain.core.volume import Volume

        model = load_model(net, device="cpu", inferer={"roi_size": ROI, "overlap": 0.25, "sw_batch_size": 1})
        spacing = (0.8, 0.8, 1.5)
        (result,) = explain(model, Volume(volume[None], spacing=spacing), "gradient", target=1,
                            roi=Volume(mask[None], spacing=spacing))
        total, windows = float(np.abs(result.map.array).sum()), result.info["sliding_window"]
    else:
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(volume)[None, None].requires_grad_(True)
        with torch.no_grad():
            sliding_window_inference(x, ROI, 1, net, overlap=0.25)  # the prediction, as ours makes it
        out = sliding_window_inference(x, ROI, 1, net, overlap=0.25)
        m = torch.from_numpy(mask)
        score = (out[0, 1] * m).sum() / m.sum()
        (grad,) = torch.autograd.grad(score, x)
        total, windows = float(grad.abs().sum()), None
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"tool": tool, "network": name, "shape": shape, "seconds": seconds, "peak_gb": peak / 2**30, "abs_sum": total,
            "windows": windows}


def run(tool: str, shape: list[int], name: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", tool, *map(str, shape), "--network", name],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"tool": tool, "shape": shape, "failed": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=3, default=[160, 160, 160])
    parser.add_argument("--no-ct", action="store_true", help="skip the 512 x 512 x 300 run")
    parser.add_argument("--network", choices=["segresnet", "unet"], default="segresnet")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], [int(v) for v in args.one[1:]], args.network)))
        return
    rows = [run("ours", args.sizes, args.network), run("graph", args.sizes, args.network)]
    if not args.no_ct:
        rows.append(run("ours", [512, 512, 300], args.network))
    for row in rows:
        if "failed" in row:
            print(f"{row['tool']:6s} {row['shape']}: failed ({row['failed']})")
            continue
        on_target = row["windows"]["windows_on_target"] if row["windows"] else "all"
        count = row["windows"]["windows"] if row["windows"] else ""
        print(f"{row['tool']:6s} {'x'.join(map(str, row['shape'])):12s} {row['seconds']:8.1f} s  "
              f"peak {row['peak_gb']:6.2f} GB  windows with a backward pass: {on_target} of {count}")
    ours, graph = rows[0], rows[1]
    if "failed" not in ours and "failed" not in graph:
        agree = abs(ours["abs_sum"] - graph["abs_sum"]) / max(graph["abs_sum"], 1e-30)
        print(f"graph / ours at {args.sizes}: time {graph['seconds'] / ours['seconds']:.2f}x, "
              f"peak memory {graph['peak_gb'] / ours['peak_gb']:.2f}x; the maps' |sum| differ by {agree:.1e}")


if __name__ == "__main__":
    main()
