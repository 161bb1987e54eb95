"""The time estimate explain() prints before each method, against the time the method then takes, side by side.

    python benchmarks/bench_estimates.py            # every method on the demo model, a SynthLesion case (64^3)
    python benchmarks/bench_estimates.py --method smoothgrad --method occlusion-regions
    python benchmarks/bench_estimates.py --real     # deepbet on Colin27 (128^3), a method of each kind

Prints, per method, the estimate, the measured time and their ratio (target: within 2x either way, for runs
of half a second or more: below that one-off start-up costs dominate, e.g. 0.3 s for the first guided
backprop of a process).
"""
from __future__ import annotations

import argparse

from xaiexplain import explain, load_model, prepare_case
from xaiexplain.methods import REGISTRY
from xaiexplain.protocol import demo_bundle
from xaiexplain.synthlesion.synth import generate_case


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", help="methods (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--real", action="store_true", help="deepbet on Colin27 (needs deepbet and mricron-data)")
    args = parser.parse_args(argv)
    if args.real:
        import tempfile

        from xaiexplain.real import deepbet
        from xaiexplain.real.material import colin27

        model = load_model(deepbet.write_model(tempfile.mkdtemp()), device=args.device)
        prepared = prepare_case(model, str(colin27("ch2")), needs_regions=True, device=args.device)
        runs = {"gradient": {}, "gradcam": {}, "smoothgrad": {"samples": 8}, "integrated-gradients": {"steps": 8},
                "lrp": {}, "occlusion": {"window": 32, "stride": 32, "refine": 0}, "occlusion-regions": {}}
        target = "brain"
    else:
        case = generate_case(1000003, positive=True)
        model = load_model(demo_bundle(), device=args.device)
        prepared = prepare_case(model, case.volume, references=[case.counterfactual], needs_regions=True,
                                device=args.device)
        runs, target = {name: {} for name, m in REGISTRY.items() if m.kind == "post-hoc"}, None
    print(f"{'method':24} {'estimate s':>10} {'took s':>8} {'ratio':>6}")
    worst = 1.0
    for name in args.method or list(runs):
        result = explain(None, prepared, [name], target=target, params={name: runs.get(name, {})})[0]
        estimate, took = result.timings["estimated_seconds"], result.timings["seconds"]
        ratio = estimate / took
        if took >= 0.5:
            worst = max(worst, ratio, 1 / ratio)
        print(f"{name:24} {estimate:10.2f} {took:8.2f} {ratio:6.2f}", flush=True)
    print(f"worst ratio either way, runs of 0.5 s or more: {worst:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
