"""Time of a full evaluation of one map at 64^3, metric by metric, with each metric's cost in passes.

    python benchmarks/bench_metrics.py                       # Grad-CAM map, demo model, CPU, default settings
    python benchmarks/bench_metrics.py --method integrated-gradients --device cuda
    python benchmarks/bench_metrics.py --quick               # the benchmark's cheaper settings

One forward pass (a batch of one 64^3 volume, inference mode) is timed in the same run, so each
metric's time can be read as forward-pass equivalents. A recomputed map counts the method's own
passes (forward and backward, see ``xaiexplain methods``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from xaiexplain import load_model, prepare_case
from xaiexplain.synthlesion.benchmark import QUICK_PARAMS, QUICK_SETTINGS
from xaiexplain.protocol import demo_bundle
from xaiexplain.metrics import evaluate
from xaiexplain.synthlesion.synth import generate_case
from xaiexplain.synthlesion.train import EVAL_SEED_START


def forward_seconds(model, x, repeats=3) -> float:
    times = []
    with torch.inference_mode():
        model.network.eval()
        model.network(x)
        for _ in range(repeats):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.network(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="the benchmark's cheaper metric settings")
    parser.add_argument("--json", help="also write the record to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = load_model(demo_bundle(), device=device)
    case = generate_case(EVAL_SEED_START + 7, positive=True)
    prepared = prepare_case(model, case.volume)
    x, mask = prepared.x, prepared.mask_to_model(case.lesion_mask)
    settings = {**(QUICK_SETTINGS if args.quick else {}), "coherence": {"tolerance_mm": 6.0}}
    params = QUICK_PARAMS.get(args.method) if args.quick else None
    one = forward_seconds(model, x)
    start = time.perf_counter()
    record = evaluate(model, x, args.method, target=1, params=params, settings=settings, mask=mask,
                      spacing=prepared.spacing_model())
    total = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"one forward pass at 64^3: {one:.4f} s")
    print(f"map: {args.method}, {record['map']['passes']} passes, {record['map']['seconds']:.3f} s")
    print(f"{'metric':26} {'property':14} {'stated fwd/bwd':>15} {'used fwd/bwd':>13} {'seconds':>8} {'x forward':>9}")
    for metric, value in record["metrics"].items():
        stated, used = value["stated_passes"], value["passes"]
        print(f"{metric:26} {value['property']:14} {stated['forward']:>7} / {stated['backward']:<5} "
              f"{used['forward']:>5} / {used['backward']:<5} {value['seconds']:8.3f} {value['seconds'] / one:9.1f}")
    print(f"full evaluation of one {args.method} map at 64^3: {total:.2f} s ({total / one:.0f} forward-pass times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"forward_seconds": one, "total_seconds": total, "record": record}, f, indent=1)


if __name__ == "__main__":
    main()
