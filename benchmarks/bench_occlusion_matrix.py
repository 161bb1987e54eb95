"""Occlusion across networks, volume sizes and window settings, against MONAI and Captum, side by side in one run.

    python benchmarks/bench_occlusion_matrix.py --quick           # 3 networks at 64^3, two settings
    python benchmarks/bench_occlusion_matrix.py                   # the whole matrix (hours on a 2-core CPU)
    python benchmarks/bench_occlusion_matrix.py --load 2          # each row idle, then beside 2 busy processes
    python benchmarks/bench_occlusion_matrix.py --networks densenet121 --sizes 96 --json out.json

Rows: a network, a size and a (window, stride) setting. Every tool explains the same target on the
same volume (a SynthLesion brain resized to the size) with the same windows and a zero baseline:
ours (exact; ``info["incremental"]`` says which path it chose), ours with ``approximate=true``,
MONAI ``OcclusionSensitivity`` (constant mode; the overlap that gives the same stride) and Captum
``Occlusion``, the peers at our batch size. Segmentation networks (SegResNet, UNet) explain the
mean logit of class 1 in a box (a 'class in a region' target); the peers get that score as a
one-output network. Printed per row: seconds of each tool, peer / ours (the faster peer), ours /
ideal (ideal: windows x the network's own per-volume time at our batch size), Pearson of each map
with ours (>= 0.99 for the peers, >= 0.95 for the approximate mode) and the approximate mode's
speed-up over exact. The tools take turns within a repeat; each time is the median of --repeats.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiexplain import attribute, load_model, prepare_case
from xaiexplain.core.provenance import versions
from xaiexplain.core.targets import SegmentationTarget
from xaiexplain.methods.machinery.scoring import timed
from xaiexplain.protocol import demo_bundle
from xaiexplain.synthlesion.synth import generate_case
from xaiexplain.synthlesion.train import EVAL_SEED_START

SIZES = (64, 96, 128)
QUICK = {"networks": ("demo", "densenet121", "segresnet"), "sizes": (64,), "settings": 2}


def _monai(name):
    from monai.networks import nets
    make = {
        "densenet121": lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2),
        "resnet18": lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2),
        "resnet50": lambda: nets.resnet50(spatial_dims=3, n_input_channels=1, num_classes=2),
        "seresnet50": lambda: nets.SEResNet50(spatial_dims=3, in_channels=1, num_classes=2),
        "segresnet": lambda: nets.SegResNet(3, init_filters=8, in_channels=1, out_channels=2),
        "unet": lambda: nets.UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2),
    }[name]
    torch.manual_seed(0)
    return make().eval()


NETWORKS = ("demo", "densenet121", "resnet18", "resnet50", "seresnet50", "segresnet", "unet")
SEGMENTATION = ("segresnet", "unet")


def settings(size: int) -> list[tuple[int, int]]:
    """(window, stride): overlapping, tiling, and a window that divides neither the size nor its stride."""
    return [(size // 4, size // 8), (size // 4, size // 4), (round(size * 0.3) | 1, round(size * 0.2))]


class RegionScore(nn.Module):
    """A segmentation network seen as a one-output network: the mean logit of ``index`` over ``region``."""

    def __init__(self, network, index, region):
        super().__init__()
        self.network, self.index, self.region = network, index, region

    def forward(self, x):
        out = self.network(x)[:, self.index]
        return ((out * self.region).flatten(1).sum(1) / self.region.sum())[:, None]


def volume(size: int) -> torch.Tensor:
    """A SynthLesion brain in the demo model's space, resized to size^3 (1, 1, size, size, size)."""
    model = load_model(demo_bundle())
    x = prepare_case(model, generate_case(EVAL_SEED_START + 7, positive=True).volume).x
    return x if x.shape[-1] == size else F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)


def pearson(a, b) -> float:
    a, b = (torch.as_tensor(v).detach().double().flatten().numpy() for v in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


def busy(stop):
    """A competing process: one core kept busy with small matrix products, as another user's work would."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def row(name: str, size: int, window: int, stride: int, repeats: int) -> dict:
    from captum.attr import Occlusion
    from monai.visualize import OcclusionSensitivity

    network = load_model(demo_bundle()).network.eval() if name == "demo" else _monai(name)
    x = volume(size)
    if name in SEGMENTATION:  # class 1 in a box around the centre
        region = torch.zeros(size, size, size)
        region[size // 4:size // 2, size // 4:size // 2, size // 4:size // 2] = 1
        target, peer_net = SegmentationTarget(1, region), RegionScore(network, 1, region).eval()
        peer_target = 0
    else:
        target, peer_net, peer_target = 1, network, 1
    common = {"window": window, "stride": stride, "refine": 0, "baseline": "zeros", "score": "logit"}
    ours = lambda: attribute(network, x, "occlusion", target=target, params=common)
    approximate = lambda: attribute(network, x, "occlusion", target=target, params={**common, "approximate": True})
    _, info, ctx = ours()  # warm-up; fixes the batch size the peers get
    batch = info["batch_size"]
    with torch.inference_mode():
        reference = float(peer_net(x)[0, peer_target])
    tools = {
        "ours": ours,
        "ours approximate": approximate,
        "MONAI": lambda: OcclusionSensitivity(peer_net, mask_size=window, n_batch=batch, verbose=False, mode=0.0,
                                              overlap=1 - stride / window, activate=False)(x)[0][:, peer_target],
        "Captum": lambda: Occlusion(peer_net).attribute(
            x, sliding_window_shapes=(1,) + (window,) * 3, strides=(1,) + (stride,) * 3, baselines=0.0,
            target=peer_target, perturbations_per_eval=batch),
    }
    times, maps, infos = {k: [] for k in tools}, {}, {}
    for _ in range(repeats):
        for tool, fn in tools.items():
            seconds, out = timed(fn)
            times[tool].append(seconds)
            maps[tool] = out[0] if isinstance(out, tuple) else out
            if isinstance(out, tuple):
                infos[tool] = out[1]
    if "MONAI" in maps:  # MONAI maps the occluded output: the drop is the unoccluded score minus it
        maps["MONAI"] = reference - maps["MONAI"]
    seconds = {k: statistics.median(v) for k, v in times.items()}
    forward = _per_volume(network, x, batch)
    windows = ctx.passes["forward"]
    ours_map = maps["ours"].reshape(-1)
    result = {"network": name, "size": size, "window": window, "stride": stride, "batch": batch,
              "passes": windows, "seconds": seconds, "ideal_seconds": windows * forward,
              "pearson": {k: pearson(ours_map, maps[k].reshape(-1)) for k in maps if k != "ours"},
              "incremental": infos["ours"].get("incremental"),
              "approximate": infos["ours approximate"].get("approximate")}
    result["peer_over_ours"] = min(seconds["MONAI"], seconds["Captum"]) / seconds["ours"]
    result["approximate_speedup"] = seconds["ours"] / seconds["ours approximate"]
    return result


def _per_volume(network, x, batch) -> float:
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    with torch.inference_mode():
        network(xb)
        return min(timed(lambda: network(xb))[0] for _ in range(2)) / batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK['networks'])} at 64^3, two settings")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS)
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument("--settings", type=int, default=3, help="how many of the three window settings (default 3)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--load", type=int, default=0, help="also run each row beside this many busy processes")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    networks = args.networks or (QUICK["networks"] if args.quick else NETWORKS)
    sizes = args.sizes or (QUICK["sizes"] if args.quick else SIZES)
    count = QUICK["settings"] if args.quick else args.settings
    print(f"CPU threads {torch.get_num_threads()}, torch {torch.__version__}", flush=True)
    print(f"{'network':12} {'size':>4} {'win/str':>7} {'load':>4} {'ours s':>7} {'MONAI':>7} {'Captum':>7} "
          f"{'peer/ours':>9} {'ours/ideal':>10} {'r MONAI':>8} {'r Captum':>8} {'approx x':>8} {'r approx':>8}  path")
    rows = []
    for name in networks:
        for size in sizes:
            for window, stride in settings(size)[:count]:
                for load in sorted({0, args.load}):
                    stop, workers = multiprocessing.Event(), []
                    for _ in range(load):
                        workers.append(multiprocessing.Process(target=busy, args=(stop,), daemon=True))
                        workers[-1].start()
                    try:
                        r = row(name, size, window, stride, args.repeats)
                    finally:
                        stop.set()
                        for w in workers:
                            w.join(10)
                    r["load"] = load
                    rows.append(r)
                    s, p = r["seconds"], r["pearson"]
                    print(f"{name:12} {size:4d} {window:3d}/{stride:<3d} {load:4d} {s['ours']:7.2f} {s['MONAI']:7.2f} "
                          f"{s['Captum']:7.2f} {r['peer_over_ours']:9.2f} {s['ours'] / r['ideal_seconds']:10.2f} "
                          f"{p['MONAI']:8.4f} {p['Captum']:8.4f} {r['approximate_speedup']:8.2f} "
                          f"{p['ours approximate']:8.4f}  {r['incremental']}", flush=True)
    worst = min(r["peer_over_ours"] for r in rows)
    print(f"worst peer / ours: {worst:.2f} (target >= 2); "
          f"worst approximate speed-up {min(r['approximate_speedup'] for r in rows):.2f} (target >= 10) at Pearson "
          f">= {min(r['pearson']['ours approximate'] for r in rows):.3f} (target >= 0.95)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"rows": rows, "versions": versions(), "argv": sys.argv[1:]}, fh, indent=2)


if __name__ == "__main__":
    main()
