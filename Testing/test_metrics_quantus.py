"""Agreement with Quantus (Hedström et al. 2023) on the same 3D inputs (channel first, flattened by Quantus).

Documented differences, each pinned by a test here:
- Sparseness: Quantus adds 1e-7 to every |a| before the Gini index; ours does not (equal on |a| + 1e-7).
- RelevanceMassAccuracy: Quantus sums the map as given; ours sums its positive part (equal on
  non-negative maps, and on signed maps once Quantus is given the positive part).
- FaithfulnessCorrelation: Quantus draws subsets from numpy's global generator; ours from a seeded
  generator or from fixed indices, which is how they are compared.
- MPRT: Quantus re-initialises each module from ``seed + 1``; ours from ``seed`` (one module a step
  with ``depth=None``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xaiexplain import attribute, load_model
from xaiexplain.metrics import (Scorer, entropy, faithfulness_correlation, gini, model_randomisation, pointing_game,
                                relevance_mass, relevance_rank)

quantus = pytest.importorskip("quantus")
SHAPE = (2, 1, 10, 9, 8)
QUIET = dict(disable_warnings=True, display_progressbar=False)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random(SHAPE).astype(np.float32)
    x[:, :, 0, 0, 0] = 0.0  # Quantus' "black" baseline is the minimum: make it 0 in every sample
    a = rng.normal(size=SHAPE)
    s = (rng.random(SHAPE) < 0.2).astype(np.float64)
    return x, a, s, np.array([1, 0])


def run(metric, net, x, y, a, s=None, **extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=net, x_batch=x, y_batch=y, a_batch=a, s_batch=s, channel_first=True,
                                 device="cpu", **extra), dtype=np.float64)


def test_sparseness_gini(net, data):
    x, a, _, y = data
    theirs = run(quantus.Sparseness(normalise=False, **QUIET), net, x, y, a.copy())
    ours = [gini(np.abs(a[i]) + 1e-7) for i in range(len(a))]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert np.abs(np.array([gini(a[i]) for i in range(len(a))]) - theirs).max() < 1e-5  # the epsilon's effect


def test_complexity_entropy(net, data):
    x, a, _, y = data
    theirs = run(quantus.Complexity(normalise=False, **QUIET), net, x, y, a.copy())
    np.testing.assert_allclose([entropy(a[i])["entropy"] for i in range(len(a))], theirs, atol=1e-6)


def test_relevance_mass_and_rank(net, data):
    x, a, s, y = data
    positive = np.clip(a, 0, None)
    theirs = run(quantus.RelevanceMassAccuracy(normalise=False, **QUIET), net, x, y, positive.copy(), s)
    np.testing.assert_allclose([relevance_mass(a[i], s[i]) for i in range(len(a))], theirs, atol=1e-6)
    signed = run(quantus.RelevanceMassAccuracy(normalise=False, **QUIET), net, x, y, a.copy(), s)
    assert np.abs(signed - theirs).max() > 1e-3  # the documented difference is real on signed maps
    theirs = run(quantus.RelevanceRankAccuracy(normalise=False, **QUIET), net, x, y, a.copy(), s)
    np.testing.assert_allclose([relevance_rank(a[i], s[i]) for i in range(len(a))], theirs, atol=1e-6)


def test_pointing_game(net, data):
    x, a, s, y = data
    a = a.copy()
    inside = np.argwhere(s[0] > 0)[0]
    a[0][tuple(inside)] = 10.0  # sample 0: the maximum in the mask
    a[1][tuple(np.argwhere(s[1] == 0)[0])] = 10.0  # sample 1: outside
    theirs = run(quantus.PointingGame(normalise=False, **QUIET), net, x, y, a.copy(), s)
    ours = [float(pointing_game(a[i], s[i])) for i in range(len(a))]
    assert ours == theirs.tolist() == [1.0, 0.0]


def test_faithfulness_correlation_with_the_same_subsets(net, data, monkeypatch):
    x, a, _, y = data
    runs, size = 12, 40
    drawn = []
    choice = np.random.choice

    def recording_choice(*args, **kwargs):  # the subsets Quantus draws, run by run, sample by sample
        picked = choice(*args, **kwargs)
        drawn.append(picked)
        return picked

    monkeypatch.setattr(np.random, "choice", recording_choice)
    theirs = run(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline="black",
                                                 normalise=False, return_aggregate=False, **QUIET),
                 net, x, y, a.astype(np.float32))
    drawn = np.array(drawn).reshape(runs, len(y), size)
    model = load_model(net, device="cpu")
    ours = [faithfulness_correlation(Scorer.for_model(model, torch.as_tensor(x[i:i + 1]), target=int(y[i])),
                                     a[i].astype(np.float32), subsets=drawn[:, i], substrate_kind="constant")
            ["correlation"] for i in range(len(y))]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_mprt_cascade(net, data):
    x, _, _, y = data

    def explain(model, inputs, targets, **_):
        return np.concatenate([attribute(model.eval(), torch.as_tensor(inputs[i:i + 1]), "gradient",
                                         target=int(targets[i]))[0].detach().numpy() for i in range(len(targets))])

    a = explain(net, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.MPRT(seed=42, **QUIET)(model=net, x_batch=x, y_batch=y, a_batch=a.copy(), channel_first=True,
                                               device="cpu", explain_func=explain)
    layers = [k for k in theirs if k != "original"]
    for i in range(len(y)):
        ours = model_randomisation(net, torch.as_tensor(x[i:i + 1]), "gradient", target=int(y[i]), attribution=a[i],
                                   depth=None, seed=43)
        assert [step["randomised"] for step in ours["steps"]] == layers
        np.testing.assert_allclose([step["spearman_abs"] for step in ours["steps"]],
                                   [theirs[k][i] for k in layers], atol=1e-6)
