"""The shipped demo models on freshly generated SynthLesion cases (seeds never seen in training)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiexplain import Preprocessor, explain
from xaiexplain.synthlesion.demo import peak_in_mask
from xaiexplain.synthlesion.synth import generate_case
from xaiexplain.synthlesion.train import EVAL_SEED_START


def predict(model, cases) -> np.ndarray:
    pre = Preprocessor(model.preprocessing)
    x = torch.stack([pre.forward(c.volume) for c in cases])
    with torch.inference_mode():
        return torch.softmax(model.network(x), 1)[:, 1].numpy()


def accuracy(model, n, start):
    cases = [generate_case(start + i, positive=bool(i % 2)) for i in range(n)]
    p = predict(model, cases)
    return float(((p > 0.5) == np.array([c.label for c in cases])).mean())


def test_demo_model_accuracy_on_fresh_cases(demo):
    assert accuracy(demo, 80, EVAL_SEED_START + 1000) >= 0.95


@pytest.mark.slow
def test_demo_model_accuracy_on_many_fresh_cases(demo):
    assert accuracy(demo, 400, EVAL_SEED_START + 5000) >= 0.95


def test_shortcut_model_follows_the_marker_and_the_clean_model_does_not(demo, shortcut):
    marked_healthy = [generate_case(EVAL_SEED_START + 2000 + i, positive=False, marker=True) for i in range(16)]
    unmarked_lesion = [generate_case(EVAL_SEED_START + 2100 + i, positive=True) for i in range(16)]
    assert (predict(shortcut, marked_healthy) > 0.5).mean() >= 0.9  # the marker alone says "lesion"
    assert (predict(shortcut, unmarked_lesion) > 0.5).mean() <= 0.5  # the lesion alone mostly does not
    assert (predict(demo, marked_healthy) > 0.5).mean() <= 0.1  # the clean model ignores the marker
    assert (predict(demo, unmarked_lesion) > 0.5).mean() >= 0.9


def peak_hit_rate(model, n_positive, start, methods):
    hits = {m: [] for m in methods}
    for i in range(n_positive):
        case = generate_case(start + i, positive=True)
        results = explain(model, case.volume, methods, target=1)
        if results[0].prediction["predicted_class"] != 1:
            continue  # only correctly classified positives
        for r in results:
            hits[r.method].append(peak_in_mask(r, case.lesion_mask.array[0], dilate=2))
    return {m: (float(np.mean(h)), len(h)) for m, h in hits.items()}


def test_gradcam_and_ig_peaks_fall_in_the_lesion(demo):
    rates = peak_hit_rate(demo, 20, EVAL_SEED_START + 3000, ["gradcam", "integrated-gradients"])
    for method, (rate, n) in rates.items():
        assert n >= 18, "too few correctly classified positives"
        assert rate >= 0.9, f"{method}: peak in lesion for {rate:.0%} of {n}"


@pytest.mark.slow
def test_gradcam_and_ig_peaks_fall_in_the_lesion_many_cases(demo):
    rates = peak_hit_rate(demo, 100, EVAL_SEED_START + 6000, ["gradcam", "integrated-gradients"])
    assert all(rate >= 0.9 for rate, _ in rates.values()), rates


@pytest.mark.parametrize("units,field", [(1, 15), (3, 47)])
def test_residual_units_set_the_receptive_field_of_the_features(units, field):
    from xaiexplain.synthlesion.demo_model import SynthLesionNet
    net = SynthLesionNet(units=units).eval()
    x = torch.zeros(1, 1, 64, 64, 64, requires_grad=True)
    features = net.features(x)
    seed = torch.zeros_like(features)
    seed[0, :, 8, 8, 8] = 1  # one feature cell in the middle
    (grad,) = torch.autograd.grad(features, x, seed)
    reached = grad[0, 0].abs().sum((1, 2)).nonzero().flatten()
    assert features.shape[2:] == (16, 16, 16) and int(reached.max() - reached.min() + 1) == field
