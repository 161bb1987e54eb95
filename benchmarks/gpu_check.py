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
    failures += sliding_windows()
    print("GPU check:", "PASS" if not failures else f"{failures} FAILED")
    return int(bool(failures))


def sliding_windows() -> int:
    """Through a SegResNet's 96^3 windows: the GPU's maps equal the CPU's on a small scan, and a 512 x 512 x 300
    CT explains within the GPU's memory (its peak allocation printed)."""
    from monai.networks.nets import SegResNet

    from xaiexplain import SegmentationTarget

    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8).eval()
    inferer = {"roi_size": [96, 96, 96], "overlap": 0.25}
    x = torch.rand(1, 1, 160, 150, 120, generator=torch.Generator().manual_seed(3))
    region = torch.zeros(160, 150, 120, dtype=torch.bool)
    region[60:100, 50:90, 40:80] = True
    failures = 0
    for name in ("gradient", "lrp", "occlusion"):
        params = {"window": 24, "stride": 24} if name == "occlusion" else None
        maps = [attribute(load_model(net, device=device, inferer=inferer), x.to(device), name,
                          target=SegmentationTarget(1, region.to(device)), params=params)[0].double().cpu()
                for device in ("cpu", "cuda")]
        r = float(np.corrcoef(maps[0].flatten().numpy(), maps[1].flatten().numpy())[0, 1])
        failures += not r > 0.999
        print(f"windows {name:10} CPU vs GPU Pearson {r:.6f} {'ok' if r > 0.999 else 'MISMATCH'}")
    ct = np.random.default_rng(4).normal(size=(1, 512, 512, 300)).astype(np.float32)
    mask = np.zeros_like(ct)
    mask[0, 232:280, 232:280, 126:174] = 1
    (result,) = explain(load_model(net, device="cuda", inferer=inferer), Volume(ct, [0.8, 0.8, 1.5]), "gradient",
                        target=1, roi=Volume(mask, [0.8, 0.8, 1.5]), device="cuda")
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    print(f"windows 512x512x300 CT gradient: {result.timings['seconds']:.1f} s, GPU peak "
          f"{result.timings['peak_memory_mb'] / 1024:.2f} GB of {total:.0f} GB")
    return failures


if __name__ == "__main__":
    sys.exit(main())
