"""On a GPU: every method gives the map it gives on the CPU (same model, same input), and explain() runs there.

    python benchmarks/gpu_check.py
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from xaiexplain import METHODS, Volume, attribute, explain, load_model
from xaiexplain.protocol import demo_bundle


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU: nothing to check")
        return 1
    cpu = load_model(demo_bundle(), device="cpu")
    gpu = load_model(demo_bundle(), device="cuda")
    x = torch.rand(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    failures = 0
    regions = torch.zeros(64, 64, 64, dtype=torch.long)  # four blocks for the region methods
    regions[:32, :32], regions[:32, 32:], regions[32:, :32], regions[32:, 32:] = 1, 2, 3, 4
    cheap = {"integrated-gradients": {"steps": 16}, "rise": {"masks": 64}, "lime": {"samples": 64},
             "kernel-shap": {"samples": 16}}
    references = torch.rand(3, 1, 64, 64, 64, generator=torch.Generator().manual_seed(2))  # for DeepSHAP
    for name in METHODS:
        params, labels = cheap.get(name), regions if METHODS[name].needs_regions else None
        a, _, _ = attribute(cpu, x, name, target=1, params=params, regions=labels, references=references)
        b, info, _ = attribute(gpu, x.cuda(), name, target=1, params=params, regions=labels,
                               references=references.cuda())
        a, b = a.double().flatten(), b.double().cpu().flatten()
        r = float(np.corrcoef(a.numpy(), b.numpy())[0, 1])
        ok = r > 0.999
        failures += not ok
        batch = f"  (GPU batch {info['batch_size']}, {info['network']})" if "network" in info else ""
        print(f"{name:22} CPU vs GPU Pearson {r:.6f} {'ok' if ok else 'MISMATCH'}{batch}")
    volume = Volume(np.random.default_rng(1).random((1, 70, 60, 50), dtype=np.float32), [2.5, 3.0, 3.5])
    results = explain(gpu, volume, ["gradcam", "integrated-gradients"], device="cuda")
    print("explain() on", results[0].model["device"], "->", [r.array.shape for r in results])
    failures += results[0].model["device"] != "cuda:0" or results[0].array.shape != (70, 60, 50)
    print("GPU check:", "PASS" if not failures else f"{failures} FAILED")
    return int(bool(failures))


if __name__ == "__main__":
    sys.exit(main())
