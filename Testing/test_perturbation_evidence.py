"""Perturbation methods on the demo model, against SynthLesion's ground truth (fresh seeds, positives only)."""
from __future__ import annotations

import numpy as np
import pytest

from xaiexplain import explain
from xaiexplain.synthlesion.demo import peak_in_mask
from xaiexplain.regions import Regions, harvard_oxford_regions
from xaiexplain.synthlesion.synth import generate_case, region_names
from xaiexplain.synthlesion.train import EVAL_SEED_START


LESION_SHARE = 0.1  # a region "contains the lesion" when it holds at least a tenth of the lesion's voxels


def lesion_share(labels: np.ndarray, lesion: np.ndarray, region: int) -> float:
    return float((labels[lesion > 0] == region).mean())


def region_ranking(model, n_positive: int, start: int, registration: str) -> dict:
    """Share of correctly classified positives whose top region contains the lesion.

    A lesion often straddles two atlas regions; the demo model pools with a global
    maximum, so only removing its most lesion-like part lowers the probability.
    Also recorded: how often the top region is the one the generator placed the lesion in.
    """
    firsts, placed = [], []
    for i in range(n_positive):
        case = generate_case(start + i, positive=True)
        if registration == "exact":  # the atlas deformed with the case by the generator: a perfect registration
            names = region_names()
            regions = Regions(case.labels, {k: names[k] for k in np.unique(case.labels.array) if k}, "harvard-oxford")
        else:
            regions = harvard_oxford_regions(case.volume, registration=registration)
        result = explain(model, case.volume, "occlusion-regions", target=1, regions=regions)[0]
        if result.prediction["predicted_class"] != 1:
            continue  # only correctly classified positives
        top = result.regions[0]["id"]
        share = lesion_share(regions.labels.array[0], case.lesion_mask.array[0], top)
        print(f"case {start + i}: top {regions.names[top]} holds {share:.0%} of the lesion, "
              f"placed in {case.region_name}")
        firsts.append(share >= LESION_SHARE)
        placed.append(regions.names[top] == case.region_name)
    return {"first": float(np.mean(firsts)), "placed_region_first": float(np.mean(placed)), "n": len(firsts)}


def test_region_occlusion_ranks_the_lesion_region_first(demo):
    found = region_ranking(demo, 2, EVAL_SEED_START + 4000, registration="exact")
    assert found["n"] == 2 and found["first"] == 1.0, found


@pytest.mark.slow
def test_region_occlusion_ranks_the_lesion_region_first_many_cases_registered_atlas(demo):
    found = region_ranking(demo, 20, EVAL_SEED_START + 7000, registration="affine")
    print(found)
    assert found["n"] >= 18 and found["first"] >= 0.9, found


def peak_rate(model, n_positive: int, start: int, params: dict) -> tuple[float, int]:
    hits = []
    for i in range(n_positive):
        case = generate_case(start + i, positive=True)
        result = explain(model, case.volume, "occlusion", target=1, params={"occlusion": params})[0]
        if result.prediction["predicted_class"] == 1:
            hits.append(peak_in_mask(result, case.lesion_mask.array[0], dilate=2))
    return float(np.mean(hits)), len(hits)


# Measured (window 16, stride 8, 2 refinement levels, 400 passes a case): the peak was in the
# dilated lesion in 9 of 9 correctly classified positives (at most 1.4 voxels from the lesion).
# Without refinement the peak is only known to a window's slack: at stride 4, 4 of 5.
def test_patch_occlusion_peak_falls_in_the_lesion(demo):
    rate, n = peak_rate(demo, 2, EVAL_SEED_START + 8001, {})
    assert n == 2 and rate == 1.0, (rate, n)


@pytest.mark.slow
def test_patch_occlusion_peak_falls_in_the_lesion_many_cases(demo):
    rate, n = peak_rate(demo, 12, EVAL_SEED_START + 8000, {})
    assert n >= 10 and rate >= 0.9, (rate, n)


def rise_hits(model, seeds, masks=None) -> list[bool]:
    hits = []
    for seed in seeds:
        case = generate_case(seed, positive=True)
        params = {"rise": {"masks": masks}} if masks else None
        result = explain(model, case.volume, "rise", target=1, params=params)[0]
        if result.prediction["predicted_class"] == 1:
            hits.append(peak_in_mask(result, case.lesion_mask.array[0]))
    return hits


# Measured with the default 1000 masks and the blur baseline: the peak 0 voxels from the lesion in 5 of 5
# cases (with 200 masks 3 of 5; with zeros, the RISE paper's baseline, 44-52 voxels away).
def test_rise_peak_falls_in_the_lesion(demo):
    assert rise_hits(demo, [EVAL_SEED_START + 8004]) == [True]  # a case 200 masks miss


@pytest.mark.slow
def test_rise_peak_falls_in_the_lesion_many_cases(demo):
    hits = rise_hits(demo, range(EVAL_SEED_START + 8001, EVAL_SEED_START + 8011))
    assert len(hits) >= 9 and np.mean(hits) >= 0.9, hits
