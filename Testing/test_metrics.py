"""The metrics on inputs whose answers are known: linear models, hand-made maps and masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaiexplain import attribute, load_model
from xaiexplain.errors import XAIError
from xaiexplain.metrics import (REGISTRY, Scorer, average_precision, coherence, compactness, completeness, consistency,
                                evaluate, faithfulness_correlation, get_metric, gini, hit_at_k, layer_groups,
                                mass_shares, max_sensitivity, model_randomisation, perturbation_curve, pointing_game,
                                relevance_mass, relevance_rank, ssim, target_sensitivity, top_mass_share)
from xaiexplain.metrics.randomisation import randomise

SHAPE = (12, 10, 8)


class LinearVolume(nn.Module):
    """logit_k = sum_v w_k(v) x(v): every gradient method's answer is known exactly."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(weights)

    def forward(self, x):
        return x.flatten(1) @ self.w.flatten(1).T


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def linear():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn((1,) + SHAPE, generator=gen)
    return load_model(LinearVolume(torch.cat([w, -w])).eval(), device="cpu")


@pytest.fixture(scope="module")
def lx():
    return torch.rand((1, 1) + SHAPE, generator=torch.Generator().manual_seed(1)) + 0.5


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    return load_model(TinyNet().eval(), device="cpu")


def test_gini_entropy_and_mass_shares_on_known_maps():
    one_hot = np.zeros(SHAPE)
    one_hot[3, 4, 5] = 2.0
    n = one_hot.size
    assert gini(one_hot) == pytest.approx((n - 1) / n)
    assert gini(np.ones(SHAPE)) == pytest.approx(0.0, abs=1e-12)
    c = compactness(one_hot)
    assert c["entropy"] == pytest.approx(0.0) and c["voxels_for_50pct_mass"] == pytest.approx(1 / n)
    uniform = compactness(-np.ones(SHAPE))  # negative everywhere: entropy of |map|, no positive mass
    assert uniform["entropy_normalised"] == pytest.approx(1.0)
    assert np.isnan(uniform["voxels_for_90pct_mass"])
    ramp = np.zeros(10)
    ramp[:4] = [4, 3, 2, 1]  # 40% of the mass in 1 of 10 voxels, 70% in 2, 90% in 3
    shares = mass_shares(ramp.reshape(10, 1, 1))
    assert shares == {"voxels_for_50pct_mass": 0.2, "voxels_for_90pct_mass": 0.3}


def test_coherence_metrics_and_tolerance_in_mm():
    a = np.zeros(SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[2:4, 2:4, 2:4] = True
    a[2, 2, 2], a[8, 2, 2], a[2, 2, 6] = 1.0, 3.0, 0.5
    assert not pointing_game(a, mask)
    # the peak (8,2,2) is 5 voxels from the mask along i: 5 mm at 1 mm, 10 mm at 2 mm spacing
    assert pointing_game(a, mask, tolerance_mm=5.0)
    assert not pointing_game(a, mask, tolerance_mm=5.0, spacing=(2.0, 1.0, 1.0))
    assert pointing_game(a, mask, tolerance_mm=10.0, spacing=(2.0, 1.0, 1.0))
    assert relevance_mass(a, mask) == pytest.approx(1.0 / 4.5)
    assert relevance_rank(a, mask) == pytest.approx(1 / 8)  # 8 mask voxels; of the top 8, one inside
    assert 0 < average_precision(a, mask) < 1
    out = coherence(a, mask.astype(np.uint8)[None], 0.0)  # (1, X, Y, Z) 0/1 masks work too
    assert out["pointing_game"] == 0.0 and out["relevance_mass"] == pytest.approx(1.0 / 4.5)
    with pytest.raises(XAIError, match="empty"):
        relevance_mass(a, np.zeros(SHAPE, bool))


def test_average_precision_matches_scikit_learn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=SHAPE), 1)  # many ties
    mask = rng.random(SHAPE) < 0.1
    assert average_precision(a, mask) == pytest.approx(metrics.average_precision_score(mask.ravel(), a.ravel()), abs=1e-12)


def test_hit_at_k_over_a_region_table():
    rows = [{"id": 4, "name": "Insula", "score": 0.1}, {"id": 7, "name": "Caudate", "score": 0.9},
            {"id": 9, "name": "Putamen", "score": 0.5}, {"id": 2, "name": "Thalamus", "score": 0.3}]
    assert hit_at_k(rows, 7, 1) and not hit_at_k(rows, 9, 1)
    assert hit_at_k(rows, "Putamen", 3) and not hit_at_k(rows, 4, 3)
    assert hit_at_k(rows, {4, 2}, 3)
    assert not hit_at_k([], 1, 3)


def test_top_mass_share_finds_the_marker():
    a = np.zeros(SHAPE)
    marker = np.zeros(SHAPE, bool)
    marker[0:2, 0:2, 0:2] = True
    a[marker] = 5.0
    a[6:, 5:, 4:] = 0.01  # a weak broad background
    assert top_mass_share(a, marker, 0.1) == 1.0
    assert top_mass_share(-a, marker, 0.1) != top_mass_share(-a, marker, 0.1)  # no positive mass: NaN


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((20, 18, 16))
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(skm.structural_similarity(a, b, data_range=1.0), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_probability_scores_use_the_sigmoid_for_a_single_logit(lx):
    w = 0.01 * torch.randn((1,) + SHAPE, generator=torch.Generator().manual_seed(2))
    single = load_model(LinearVolume(w).eval(), device="cpu")
    logit = float((w[0] * lx[0, 0]).sum())
    scorer = Scorer.for_model(single, lx, target=0, output="probability")
    assert scorer.base == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5) and 0.01 < scorer.base < 0.99


def test_deletion_and_insertion_rank_the_exact_map_first(linear, lx):
    before = lx.clone()
    exact = (linear.network.w[1:] * lx[0]).detach()  # contribution of each voxel to the logit
    scorer = Scorer.for_model(linear, lx, target=0, output="logit")
    good = perturbation_curve(scorer, -exact, "deletion", steps=10, substrate_kind="constant")
    bad = perturbation_curve(scorer, exact, "deletion", steps=10, substrate_kind="constant")
    assert scorer.passes == 22  # steps + 1 per curve
    assert good["auc"] < bad["auc"]
    assert good["scores"][0] == pytest.approx(scorer.base, rel=1e-5) and good["scores"][-1] == pytest.approx(0, abs=1e-4)
    insertion = perturbation_curve(scorer, -exact, "insertion", steps=10, substrate_kind="constant")
    assert insertion["scores"][0] == pytest.approx(0, abs=1e-4) and insertion["auc"] > good["auc"]
    blurred = perturbation_curve(scorer, -exact, "deletion", steps=4)
    assert blurred["substrate"] == "blur" and len(blurred["scores"]) == 5
    early = perturbation_curve(scorer, -exact, "deletion", steps=4, substrate_kind="constant", until=0.1)
    assert early["fractions"][-1] == pytest.approx(0.1, abs=1 / lx.numel()) and early["scores"][-1] < early["scores"][0]
    assert early["auc"] == pytest.approx(np.mean(early["scores"]), rel=0.3)  # normalised by the range
    assert torch.equal(lx, before)  # the caller's input is untouched


def test_faithfulness_correlation_is_one_for_the_exact_map_of_a_linear_model(linear, lx):
    exact = (linear.network.w[0] * lx[0]).detach()
    scorer = Scorer.for_model(linear, lx, target=0)
    out = faithfulness_correlation(scorer, exact, samples=20, subset=0.05, seed=3)
    assert out["correlation"] == pytest.approx(1.0, abs=1e-5)
    assert scorer.passes == 20 and out["subset_size"] == round(0.05 * np.prod(SHAPE))
    noise = faithfulness_correlation(scorer, torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)),
                                     samples=20, subset=0.05, seed=3)
    assert noise["correlation"] < 0.7


def test_completeness_applies_to_ig_only(tiny):
    x = torch.rand((1, 1, 8, 8, 8), generator=torch.Generator().manual_seed(2))
    scorer = Scorer.for_model(tiny, x, target=1)
    ig, _, _ = attribute(tiny, x, "integrated-gradients", target=1, params={"steps": 64})
    out = completeness(scorer, ig, "integrated-gradients", {"steps": 64})
    # the baseline's score, and the probe that chose it (the default baseline is auto): x and x / 2
    assert out["applies"] and out["completeness_error"] < 1e-3 and scorer.passes == 3
    assert "relative_error" not in out  # one name for the one definition (methods.base.completeness_error)
    wrong = completeness(scorer, ig * 2, "integrated-gradients", {"steps": 64})
    assert wrong["completeness_error"] == pytest.approx(1.0, abs=1e-2)
    assert completeness(scorer, ig, "gradcam") == {"applies": False}


def test_consistency_continuity_and_contrastivity(linear, lx):
    same = consistency(linear, lx, "smoothgrad", target=0, params={"samples": 3}, seed=5)
    assert same["identical"] and same["passes"] == {"forward": 6, "backward": 6}
    # a linear model's gradient does not move under noise; gradient x input moves with the input
    still = max_sensitivity(linear, lx, "gradient", target=0, samples=3, radius=0.05, batch_size=2)
    assert still["max_sensitivity"] == 0.0 and still["passes"] == {"forward": 4, "backward": 4}
    moving = max_sensitivity(linear, lx, "gradient-x-input", target=0, samples=3, radius=0.05)
    assert 0 < moving["max_sensitivity"] < 0.2
    # class 1's weights are minus class 0's: the maps are exact opposites, |maps| identical
    contrast = target_sensitivity(linear, lx, "gradient", target=0)
    assert contrast["pearson"] == pytest.approx(-1.0) and contrast["spearman_abs"] == pytest.approx(1.0)
    assert contrast["passes"] == {"forward": 2, "backward": 2}  # the target's map, then the other class's


def test_randomisation_cascades_from_the_top_and_leaves_the_model_alone(tiny):
    assert [name for name, _ in layer_groups(tiny.network, 1)] == ["head", "features"]
    assert [name for name, _ in layer_groups(tiny.network, None)] == ["head.2", "features.2", "features.0"]
    x = torch.rand((1, 1, 10, 10, 10), generator=torch.Generator().manual_seed(4))
    weights = {k: v.clone() for k, v in tiny.network.state_dict().items()}
    out = model_randomisation(tiny, x, "gradient", target=1, depth=None, seed=1)
    assert [s["randomised"] for s in out["steps"]] == ["head.2", "features.2", "features.0"]
    assert out["passes"] == {"forward": 5, "backward": 5}  # original + pair + 3 steps
    assert all(torch.equal(v, tiny.network.state_dict()[k]) for k, v in weights.items())
    assert out["final"]["spearman_abs"] < 0.9 and 0 <= out["cascade_sensitivity"] <= 2
    again = model_randomisation(tiny, x, "gradient", target=1, depth=None, seed=1)
    assert again["steps"] == out["steps"]  # seeded
    copy = TinyNet()
    rng_state = torch.get_rng_state()
    randomise(copy, ["features.0"], seed=1)
    assert torch.equal(rng_state, torch.get_rng_state())  # the caller's random stream is not consumed


def test_evaluate_runs_every_metric_and_states_its_cost(demo, demo_x, positive_case):
    from xaiexplain import Preprocessor

    mask = Preprocessor(demo.preprocessing).forward_mask(positive_case.lesion_mask)[0]
    before = demo_x.clone()
    settings = {"deletion": {"steps": 4}, "insertion": {"steps": 4}, "faithfulness_correlation": {"samples": 4},
                "continuity": {"samples": 2}, "randomisation": {"depth": 1}, "coherence": {"tolerance_mm": 6.0}}
    record = evaluate(demo, demo_x, "gradcam", target=1, settings=settings, mask=mask, spacing=(3.0, 3.0, 3.0))
    assert list(record["metrics"]) == list(REGISTRY)
    for name, value in record["metrics"].items():
        assert value["passes"] == value["stated_passes"], name
    assert record["metrics"]["consistency"]["identical"]
    assert record["metrics"]["coherence"]["pointing_game"] == 1.0
    assert record["versions"]["torch"] and record["seed"] == 0 and record["map"]["passes"]["backward"] == 1
    ig = evaluate(demo, demo_x, "integrated-gradients", target=1, params={"steps": 4}, settings=settings,
                  metrics=["completeness", "continuity"])
    assert ig["metrics"]["completeness"]["applies"]
    assert ig["metrics"]["continuity"]["passes"] == ig["metrics"]["continuity"]["stated_passes"] == \
        {"forward": 14, "backward": 8}  # 2 x (4 steps + input + baseline + the auto baseline's probe)
    assert record["metrics"]["deletion"]["passes"]["forward"] == 5
    assert torch.equal(demo_x, before)


def test_stated_cost_scales_with_the_method(demo, demo_x):
    from xaiexplain.methods import get_method

    ig = get_method("integrated-gradients")
    params = ig.params({"steps": 10})
    assert get_metric("continuity").cost({"samples": 3}, ig, params, x=demo_x, model=demo, n_classes=2) == \
        {"forward": 39, "backward": 30}  # 3 x (10 steps + input + baseline + the auto baseline's probe)
    assert get_metric("randomisation").cost({"depth": 2}, ig, params, x=demo_x, model=demo, n_classes=2)["forward"] == \
        7 * 13


def test_unknown_metric_and_setting_are_refused(demo, demo_x):
    with pytest.raises(XAIError, match="unknown metric"):
        evaluate(demo, demo_x, "gradient", metrics=["beauty"])
    with pytest.raises(XAIError, match="no setting"):
        evaluate(demo, demo_x, "gradient", metrics=["deletion"], settings={"deletion": {"colour": 1}})


def test_evaluate_cli_writes_json_and_csv(tmp_path, positive_case):
    import json

    from xaiexplain.cli.main import main
    from xaiexplain.core.volume import write_volume
    from xaiexplain.protocol import demo_bundle

    volume, mask = tmp_path / "t1.nrrd", tmp_path / "lesion.nrrd"
    write_volume(positive_case.volume, volume)
    write_volume(positive_case.lesion_mask, mask)
    code = main(["evaluate", "--model", str(demo_bundle()), "--input", str(volume), "--method", "gradcam",
                 "--target", "lesion", "--mask", str(mask), "--metric", "deletion", "--metric", "compactness",
                 "--metric", "coherence", "--setting", "deletion.steps=5", "--setting", "coherence.tolerance_mm=6",
                 "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    record = json.loads((tmp_path / "out" / "evaluation.json").read_text())["records"][0]
    assert set(record["metrics"]) == {"deletion", "compactness", "coherence"}
    assert record["metrics"]["deletion"]["passes"]["forward"] == 6
    assert record["metrics"]["coherence"]["pointing_game"] == 1.0
    assert "deletion_auc" in (tmp_path / "out" / "evaluation.csv").read_text().splitlines()[0]
