"""Occlusion speed against MONAI and Captum, measured side by side in one run on the same model, volume and settings.

    python benchmarks/bench_perturbation.py            # demo model, 64^3, CPU; peers at equal and default batch sizes
    python benchmarks/bench_perturbation.py --quick    # one repeat, peers at equal batch size only
    python benchmarks/bench_perturbation.py --device cuda --json out.json

Patch occlusion (16^3 window, stride 8, no refinement, zero baseline, target logit) against MONAI
``OcclusionSensitivity`` (constant mode, overlap 0.5: the same windows) and Captum
``Occlusion``; region occlusion over the case's Harvard-Oxford regions against Captum
``FeatureAblation`` with the same ``feature_mask``. For each: the voxelwise Pearson
correlation with our map (>= 0.99 required), the time ratio peer / ours, and our time
divided by the ideal (forward passes x per-volume forward time of the network as given, at
our batch size; ours runs a verified faster copy of the network, and on a CPU scores the
occluded boxes incrementally, so it can be well below 1). A second row times ours with every
perturbation scored as a full volume, to show what the incremental scoring adds;
``--incremental-devices cpu,cuda`` turns it on for a GPU too.
Each time is the median of --repeats runs, the tools taking turns within a repeat.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from xaiexplain import attribute, load_model, prepare_case
from xaiexplain.protocol import demo_bundle
from xaiexplain.methods.machinery import scoring as perturb  # the perturbation scorer and its settings
from xaiexplain.core.provenance import versions
from xaiexplain.synthlesion.synth import generate_case
from xaiexplain.synthlesion.train import EVAL_SEED_START

WINDOW, STRIDE = 16, 8


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pearson(a, b, where=None) -> float:
    a, b = (torch.as_tensor(v).detach().double().cpu().flatten() for v in (a, b))
    if where is not None:
        keep = torch.as_tensor(where).flatten().cpu()
        a, b = a[keep], b[keep]
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


def per_volume_forward(network, x, batch, device, repeats=3) -> float:
    """Seconds per volume of a forward pass at ``batch`` volumes per call (inference mode), best of ``repeats``."""
    xb = x.expand(batch, *x.shape[1:]).clone()
    best = float("inf")
    with torch.inference_mode():
        network(xb)
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            network(xb)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best / batch


def run_timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat; peers at our batch size only")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--incremental-devices", default=",".join(perturb.INCREMENTAL_DEVICES),
                        help="device types on which ours scores boxes incrementally (default: %(default)s)")
    args = parser.parse_args(argv)
    perturb.INCREMENTAL_DEVICES = tuple(d for d in args.incremental_devices.split(",") if d)
    if args.quick:
        args.repeats = 1
    warnings.filterwarnings("ignore")
    from captum.attr import FeatureAblation, Occlusion
    from monai.visualize import OcclusionSensitivity

    device = torch.device(args.device)
    model = load_model(demo_bundle(), device=device)
    net = model.network.eval()
    case = generate_case(EVAL_SEED_START + 7, positive=True)
    prepared = prepare_case(model, case.volume)
    x = prepared.x
    reference = model.output(x)
    target = 1
    # the Harvard-Oxford labels the generator moved with the case (no atlas package needed on a GPU machine)
    labels = torch.round(prepared.mask_to_model(case.labels)).long()
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}; demo model, volume {tuple(x.shape[2:])}",
          flush=True)

    common = {"baseline": "zeros", "score": "logit"}
    ours_patch = lambda: attribute(model, x, "occlusion", target=target, reference=reference,
                                   params={**common, "window": WINDOW, "stride": STRIDE, "refine": 0})
    ours_region = lambda: attribute(model, x, "occlusion-regions", target=target, reference=reference,
                                    regions=labels, params=common)
    _, info, ctx = ours_patch()  # warm-up; fixes our batch size
    print(f"ours scores boxes incrementally: {info['incremental']}", flush=True)

    def full_volumes(ours):
        """Ours with every perturbation scored as a full volume."""
        kept, perturb.INCREMENTAL_DEVICES = perturb.INCREMENTAL_DEVICES, ()
        try:
            return ours()[0]
        finally:
            perturb.INCREMENTAL_DEVICES = kept
    batch = info["batch_size"]
    jobs = {
        "patch": {"ours": ours_patch, "passes": ctx.passes["forward"], "peers": {
            "ours, every perturbation a full volume": lambda: full_volumes(ours_patch),
            f"MONAI OcclusionSensitivity n_batch={batch}": lambda: OcclusionSensitivity(
                net, mask_size=WINDOW, n_batch=batch, verbose=False, mode=0.0, overlap=1 - STRIDE / WINDOW,
                activate=False)(x)[0][:, target:target + 1],
            f"Captum Occlusion perturbations_per_eval={batch}": lambda: Occlusion(net).attribute(
                x, sliding_window_shapes=(1,) + (WINDOW,) * 3, strides=(1,) + (STRIDE,) * 3, baselines=0.0,
                target=target, perturbations_per_eval=batch)}},
        "regions": {"ours": ours_region, "passes": None, "peers": {
            "ours, every perturbation a full volume": lambda: full_volumes(ours_region),
            f"Captum FeatureAblation perturbations_per_eval={batch}": lambda: FeatureAblation(net).attribute(
                x, baselines=0.0, target=target, feature_mask=labels[None, None], perturbations_per_eval=batch)}},
    }
    if not args.quick:  # the peers' default batching: MONAI 16 volumes per call, Captum one
        jobs["patch"]["peers"]["MONAI OcclusionSensitivity n_batch=16 (default)"] = lambda: OcclusionSensitivity(
            net, mask_size=WINDOW, n_batch=16, verbose=False, mode=0.0, overlap=1 - STRIDE / WINDOW,
            activate=False)(x)[0][:, target:target + 1]
        jobs["patch"]["peers"]["Captum Occlusion perturbations_per_eval=1 (default)"] = lambda: Occlusion(
            net).attribute(x, sliding_window_shapes=(1,) + (WINDOW,) * 3, strides=(1,) + (STRIDE,) * 3,
                           baselines=0.0, target=target)
        jobs["regions"]["peers"]["Captum FeatureAblation perturbations_per_eval=1 (default)"] = (
            lambda: FeatureAblation(net).attribute(x, baselines=0.0, target=target, feature_mask=labels[None, None]))

    rows = []
    for name, job in jobs.items():
        times = {"ours": []}
        maps = {}
        for _ in range(args.repeats):
            seconds, (ours_map, info, ctx) = run_timed(job["ours"], device)
            times["ours"].append(seconds)
            for peer, fn in job["peers"].items():
                seconds, maps[peer] = run_timed(fn, device)
                times.setdefault(peer, []).append(seconds)
        passes = ctx.passes["forward"]
        forward = per_volume_forward(net, x, info["batch_size"], device)
        ours = statistics.median(times["ours"])
        ideal = passes * forward
        print(f"\n{name} occlusion: {passes} forward passes at batch {info['batch_size']}, "
              f"forward {forward * 1000:.1f} ms/volume, ideal {ideal:.2f} s; ours runs: {info['network']}",
              flush=True)
        print(f"  {'ours':58} {ours:8.2f} s   {ours / ideal:5.2f} x ideal")
        for peer in job["peers"]:
            peer_map = maps[peer]
            if peer.startswith("MONAI"):  # MONAI maps the occluded output; the drop is the unoccluded minus it
                peer_map = reference[0, target] - peer_map
            where = labels[None, None] > 0 if name == "regions" else None  # Captum also ablates the background
            r = pearson(ours_map, peer_map.reshape(ours_map.shape), where)
            seconds = statistics.median(times[peer])
            print(f"  {peer:58} {seconds:8.2f} s   {seconds / ours:5.2f} x ours   Pearson {r:.5f}", flush=True)
            rows.append({"job": name, "peer": peer, "seconds": seconds, "ours_seconds": ours,
                         "speedup": seconds / ours, "pearson": r, "passes": passes, "ideal_seconds": ideal,
                         "ours_vs_ideal": ours / ideal, "batch_size": info["batch_size"], "network": info["network"],
                         "incremental": info.get("incremental"),
                         "device": str(device), "repeats": args.repeats})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "versions": versions(), "argv": sys.argv[1:]}, fh, indent=2)


if __name__ == "__main__":
    main()
