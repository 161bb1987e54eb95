"""The prepared case (core/case.py): built once, into model space and back, shared by explain and metrics."""
from __future__ import annotations

import numpy as np
import pytest

from xaiexplain import PreparedCase, XAIError, explain, load_model, prepare_case
from xaiexplain.regions import supervoxel_regions


def test_one_case_serves_every_run_and_equals_explaining_the_volume(demo, positive_case):
    volume = positive_case.volume
    before = volume.array.copy()
    case = prepare_case(demo, volume, references=[positive_case.counterfactual])
    assert isinstance(case, PreparedCase) and tuple(case.x.shape) == (1, 1, 64, 64, 64)
    assert tuple(case.references_model.shape) == (1, 1, 64, 64, 64)
    from_case = explain(None, case, ["gradient", "deepshap"], seed=0)
    direct = explain(demo, volume, ["gradient", "deepshap"], seed=0, references=[positive_case.counterfactual])
    for a, b in zip(from_case, direct):
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-8)
        assert a.map.same_grid(volume) and a.params == b.params
    np.testing.assert_array_equal(volume.array, before)  # the caller's data is never modified


def test_the_way_back_inverts_resampling_onto_the_input_grid(demo, positive_case):
    # the model sees 2 mm voxels, no intensity scaling; maps come back on the 3 mm input grid
    model = load_model(demo.network, preprocessing={"orientation": "LPS", "spacing": [2.0, 2.0, 2.0]}, device="cpu")
    case = prepare_case(model, positive_case.volume)
    assert tuple(case.x.shape[2:]) == (96, 96, 96)
    np.testing.assert_allclose(case.spacing_model(), [2.0, 2.0, 2.0], rtol=1e-6)
    back = case.to_input_grid(case.x[0].cpu())[0]
    given = positive_case.volume.array[0]
    assert back.shape == given.shape
    inside = given > 0.2 * given.max()
    assert np.abs(back - given)[inside].mean() < 0.03 * given[inside].mean()


def test_masks_regions_and_baselines_reach_model_space(demo, positive_case):
    volume = positive_case.volume
    regions = supervoxel_regions(volume, n_segments=20)
    case = prepare_case(demo, volume, roi=positive_case.lesion_mask, regions=regions)
    assert str(case.roi_model.dtype) == "torch.bool"
    assert int(case.roi_model.sum()) == int(positive_case.lesion_mask.array.sum())
    assert case.n_regions == len(regions.names)
    run, record = case.baselines({"integrated-gradients": {"baseline": positive_case.counterfactual}})
    assert tuple(run["integrated-gradients"]["baseline"].shape) == tuple(case.x.shape)
    assert record["integrated-gradients"]["baseline"] == "reference volume"
    with pytest.raises(XAIError, match="unknown baseline"):
        case.baselines({"integrated-gradients": {"baseline": "noise"}})


def test_a_case_refuses_what_no_method_can_explain(demo, positive_case):
    constant = positive_case.volume.with_array(np.ones_like(positive_case.volume.array))
    with pytest.raises(XAIError, match="constant"):
        prepare_case(demo, constant)
    with pytest.raises(XAIError, match="input channel"):
        prepare_case(demo, [positive_case.volume, positive_case.volume])


def test_a_prepared_case_refuses_what_would_silently_not_apply(demo, positive_case):
    case = prepare_case(demo, positive_case.volume)
    with pytest.raises(XAIError, match="references cannot change a prepared case"):
        explain(None, case, ["deepshap"], references=[positive_case.counterfactual])
    with pytest.raises(XAIError, match="another model"):
        explain("some_other_model.pt2", case, ["gradient"])
    with pytest.raises(XAIError, match="need regions"):
        explain(None, case, ["gradient", "occlusion-regions"])
    assert explain(demo, case, ["gradient"])[0].map.same_grid(positive_case.volume)  # the case's own model


def test_a_reused_case_says_each_note_once(demo, positive_case):
    moved = positive_case.counterfactual.with_array(positive_case.counterfactual.array)
    moved.origin = moved.origin + 1.5  # another grid: resampled onto the input's
    case = prepare_case(demo, positive_case.volume, references=[moved])
    for _ in range(2):
        case.baselines({"integrated-gradients": {"baseline": moved}})
    assert case.notes.count("a reference volume was resampled (linear) onto the input grid") == 1
