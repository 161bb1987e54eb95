"""SynthLesion: deterministic, lesion where asked, counterfactual that differs only at the lesion."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xaiexplain import XAIError
from xaiexplain.synthlesion.synth import generate_case, grid, lesion_regions, region_names


def test_same_seed_same_case_and_other_seed_other_case():
    a, b, c = generate_case(11, positive=True), generate_case(11, positive=True), generate_case(12, positive=True)
    assert np.array_equal(a.volume.array, b.volume.array) and a.params == b.params
    assert not np.array_equal(a.volume.array, c.volume.array)


def test_lesion_sits_in_the_chosen_region_and_is_the_only_difference_to_the_counterfactual():
    names = region_names()
    region = next(k for k, v in names.items() if v == "Left_Precentral_Gyrus")
    case = generate_case(21, positive=True, region="Left_Precentral_Gyrus", contrast=0.5)
    mask = case.lesion_mask.array[0] > 0
    assert case.label == 1 and case.region_id == region and case.region_name == "Left_Precentral_Gyrus"
    assert 20 < mask.sum() < 600
    center = np.round(ndimage.center_of_mass(mask)).astype(int)
    assert case.labels.array[0][tuple(center)] == region  # deformed atlas agrees at the lesion centre
    diff = np.abs(case.volume.array[0] - case.counterfactual.array[0])
    assert diff[mask].min() > 0
    # exact away from the lesion: its soft edge reaches 1.25 radii, plus one voxel of interpolation
    outside = ~ndimage.binary_dilation(mask, iterations=3)
    assert diff[outside].max() < 1e-3 * diff[mask].mean()
    brightest_tissue = np.percentile(case.counterfactual.array[0][mask], 50)
    assert case.volume.array[0][mask].mean() > 1.15 * brightest_tissue


def test_negative_case_has_no_lesion_and_marker_is_planted():
    case = generate_case(31, positive=False, marker=True)
    assert case.label == 0 and case.lesion_mask.array.sum() == 0
    assert np.array_equal(case.volume.array, case.counterfactual.array)
    corner = case.volume.array[0, 1:4, 1:4, 1:4]
    assert corner.min() > 1.5 * np.percentile(case.volume.array, 99.9)


def test_grid_geometry_and_regions():
    g = grid()
    assert g.shape == (64, 64, 64) and np.allclose(g.spacing, 3.0)
    centre = g.ijk_to_ras() @ np.array([31.5, 31.5, 31.5, 1.0])
    assert np.allclose(centre[:3], [0.0, -17.0, 13.0])  # RAS mm, middle of the MNI brain
    assert len(lesion_regions()) > 80 and all(r in region_names() for r in lesion_regions())
    with pytest.raises(XAIError, match="unknown Harvard-Oxford region"):
        generate_case(1, positive=True, region="Atlantis")


def test_peak_in_mask_uses_a_euclidean_ball():
    from types import SimpleNamespace

    from xaiexplain.synthlesion.demo import peak_in_mask

    mask = np.zeros((9, 9, 9), np.uint8)
    mask[4, 4, 4] = 1
    at = lambda *ijk: SimpleNamespace(peak_index=lambda: ijk)  # noqa: E731
    assert peak_in_mask(at(4, 4, 6), mask) and peak_in_mask(at(5, 5, 5), mask)  # distances 2 and 1.73
    assert not peak_in_mask(at(6, 5, 4), mask) and not peak_in_mask(at(4, 4, 7), mask)  # 2.24 and 3
    assert not peak_in_mask(at(4, 4, 4), np.zeros_like(mask))
