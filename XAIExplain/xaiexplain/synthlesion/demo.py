"""``xaiexplain demo``: one SynthLesion case, the demo model, every gradient, CAM and propagation method.

DeepSHAP's reference set is the case's lesion-free counterfactual: the same brain, so the
map explains what the lesion changed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.explain import explain
from ..core.models import load_model
from ..core.volume import write_volume
from ..io.outputs import check_output_folder, write_results
from ..methods import REGISTRY
from ..methods.base import forward_equivalents
from ..protocol import demo_bundle
from ..regions import SUPERVOXELS
from .synth import generate_case


def peak_in_mask(attribution, mask: np.ndarray, dilate: float = 2) -> bool:
    """Is the map's maximum inside ``mask`` dilated by a ball of ``dilate`` voxels (Euclidean)?"""
    if not mask.any():
        return False
    distance = ndimage.distance_transform_edt(mask == 0)
    return bool(distance[attribution.peak_index()] <= dilate)


QUICK_PASSES = 200  # forward-pass equivalents: every gradient, CAM and propagation method, no perturbation


DEMO_FILES = ("input.nrrd", "lesion_mask.nrrd", "counterfactual.nrrd")


def run_demo(out="demo-output", seed: int = 1000003, methods=None, device="auto", progress=None,
             overwrite: bool = False) -> list:
    out = Path(out)
    check_output_folder(out, DEMO_FILES, overwrite)
    case = generate_case(seed, positive=True)
    model = load_model(demo_bundle(), device=device)
    shape = tuple(case.volume.shape)  # the demo model takes the SynthLesion grid as it is
    methods = methods or [name for name, m in REGISTRY.items()  # those for a classifier, taking seconds
                          if m.classification and m.family != "perturbation" and m.kind == "post-hoc"
                          and forward_equivalents(m.estimate(m.params({}), shape, SUPERVOXELS)) <= QUICK_PASSES]
    results = explain(model, case.volume, methods, seed=0, references=[case.counterfactual],
                      progress=progress)
    mask = case.lesion_mask.array[0]
    checks = {r.method: {"peak_in_dilated_lesion": peak_in_mask(r, mask)} for r in results}
    write_results(out, case.volume, results, {
        "demo": {"case": case.params, "region": case.region_name, "lesion_voxels": int(mask.sum()),
                 "checks": checks}}, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_volume(case.volume, out / "input.nrrd")
    write_volume(case.lesion_mask, out / "lesion_mask.nrrd")
    write_volume(case.counterfactual, out / "counterfactual.nrrd")
    pred = results[0].prediction
    print(f"SynthLesion case {seed}: lesion in {case.region_name} ({int(mask.sum())} voxels)")
    print(f"demo model: {pred['predicted_name']} (p={max(pred['probabilities']):.3f})")
    for r in results:
        hit = "inside" if checks[r.method]["peak_in_dilated_lesion"] else "outside"
        print(f"  {r.method:22} {r.timings['seconds']:7.2f} s  peak {hit} the lesion")
    print(f"wrote maps, previews and summary.json to {out}/")
    return results
