"""``xaiexplain demo --real``: deepbet's trained network on the Colin27 head, checked against ch2bet.

The brain mask deepbet predicts is compared with an independent brain extraction (Dice),
and each map's positive evidence for "brain" is measured inside that mask: a map that
puts its mass elsewhere, or a method whose sums do not add up, is visible at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.case import prepare_case
from ..core.explain import explain
from ..core.models import load_model
from ..core.volume import read_volume, write_volume
from ..io.outputs import check_output_folder, write_results
from . import deepbet
from .material import colin27, dice

METHODS = ["gradcam", "gradient", "integrated-gradients", "lrp", "deeplift"]
PARAMS = {"integrated-gradients": {"steps": 32}}  # baselines: 'auto' sees the network is scale-invariant
MARGIN_VOXELS = 3  # the mask's border is a decision boundary: evidence sits on both sides of it


def positive_share_inside(array: np.ndarray, mask: np.ndarray) -> float:
    """Share of a map's positive mass inside ``mask`` (grown by MARGIN_VOXELS)."""
    positive = np.clip(array, 0, None)
    total = float(positive.sum())
    grown = ndimage.binary_dilation(mask, iterations=MARGIN_VOXELS)
    return float(positive[grown].sum()) / total if total > 0 else float("nan")


def run_real_demo(out="demo-real-output", methods=None, device="auto", progress=None, overwrite: bool = False) -> dict:
    out = Path(out)
    check_output_folder(out, ["predicted_brain.nrrd"], overwrite)
    scan, reference_path = colin27("ch2"), colin27("ch2bet")
    model = load_model(deepbet.write_model(out / "model"), device=device)
    case = prepare_case(model, str(scan), device=device)
    brain = case.to_input_grid((case.output()[0, 1:2] > 0.5).float())[0] > 0.5
    reference = read_volume(reference_path).array[0] > 0
    agreement = dice(brain, reference)
    methods = methods or METHODS
    results = explain(None, case, methods, target="brain", progress=progress,
                      params={name: value for name, value in PARAMS.items() if name in methods})
    checks = {r.method: {"positive_share_in_brain": positive_share_inside(r.array, brain),
                         "completeness_error": r.info.get("completeness_error")} for r in results}
    write_results(out, case.volume, results, {"demo": {
        "model": "deepbet 1.0.2 whole-head network (LinkNet3d)", "scan": str(scan), "reference": str(reference_path),
        "dice_vs_reference": agreement, "brain_voxels": int(brain.sum()), "checks": checks}}, overwrite=overwrite)
    write_volume(case.volume.with_array(brain[None].astype(np.float32), ["brain"]), out / "predicted_brain.nrrd")
    print(f"deepbet on Colin27 ({scan.name}): predicted brain {int(brain.sum())} voxels, "
          f"Dice {agreement:.3f} against {reference_path.name}")
    for r in results:
        facts = checks[r.method]
        error = facts["completeness_error"]
        sums = "" if error is None else f", completeness error {error:.3f}"
        print(f"  {r.method:22} {r.timings['seconds']:7.2f} s  "
              f"{facts['positive_share_in_brain']:.0%} of positive evidence in the brain{sums}")
    print(f"wrote maps, previews and summary.json to {out}/")
    return {"dice": agreement, "checks": checks, "results": results}
