"""Evidence on the shipped demo models (SynthLesion evaluation seeds): localisation, the randomisation
sanity check and the shortcut test. Each takes minutes on a CPU: run with ``pytest -m slow``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiexplain import Preprocessor, attribute
from xaiexplain.metrics import model_randomisation, pointing_game, randomisation_verdict, relevance_mass, top_mass_share
from xaiexplain.synthlesion.synth import generate_case, marker_mask
from xaiexplain.synthlesion.train import EVAL_SEED_START

pytestmark = pytest.mark.slow


def model_space(model, volume):
    return Preprocessor(model.preprocessing).forward(volume)[None]


def lesion_probability(model, x) -> float:
    with torch.inference_mode():
        return float(torch.softmax(model.network(x), 1)[0, 1])


def test_a_method_localises_the_lesion(demo):
    """Pointing game (6 mm) >= 0.9 and relevance mass >= 0.5 on correctly classified positives.

    IG from the case's healthy counterfactual (a reference volume as baseline) reaches both; with
    the usual baselines every method points at the lesion but spreads most of its positive mass
    outside a lesion that is ~0.04% of the volume (guided Grad-CAM, the most compact, about 0.4).
    """
    scores = []
    for i in range(10):
        case = generate_case(EVAL_SEED_START + 71000 + i, positive=True)
        x = model_space(demo, case.volume)
        if lesion_probability(demo, x) <= 0.5:
            continue
        mask = Preprocessor(demo.preprocessing).forward_mask(case.lesion_mask)[0]
        baseline = model_space(demo, case.counterfactual)
        maps, _, _ = attribute(demo, x, "integrated-gradients", target=1, params={"baseline": baseline, "steps": 16})
        scores.append((pointing_game(maps, mask, 6.0, (3.0, 3.0, 3.0)), relevance_mass(maps, mask)))
    assert len(scores) >= 9
    pointing, mass = np.mean(scores, 0)
    assert pointing >= 0.9 and mass >= 0.5, (pointing, mass)


def test_randomisation_gradcam_gradients_ig_pass_and_guided_backprop_barely_moves(demo):
    """Grad-CAM, gradient, IG, LRP and occlusion pass the final-step verdict on every case. Guided backprop's map gives
    way far later in the cascade (measured on 3 cases: cascade sensitivity 0.08 vs gradient 0.19 and
    Grad-CAM 0.85). IG from a zero baseline is close to gradient x input, dominated by the input,
    and is barely more sensitive than guided backprop (0.10): recorded, not asserted."""
    cases = [generate_case(EVAL_SEED_START + 72000 + i, positive=True) for i in range(3)]
    xs = [model_space(demo, c.volume) for c in cases]
    results = {}
    for method, params in (("gradcam", None), ("gradient", None), ("integrated-gradients", {"steps": 8}),
                           ("lrp", None), ("occlusion", {"stride": 16}), ("guided-backprop", None)):
        results[method] = [model_randomisation(demo, xs[i], method, target=1, params=params, pair=xs[(i + 1) % 3])
                           for i in range(3)]
    for method in ("gradcam", "gradient", "integrated-gradients", "lrp", "occlusion"):
        assert all(randomisation_verdict(r) for r in results[method]), method
    sensitivity = {m: np.mean([r["cascade_sensitivity"] for r in rs]) for m, rs in results.items()}
    assert sensitivity["guided-backprop"] < 0.5 * sensitivity["gradient"], sensitivity
    assert sensitivity["guided-backprop"] < 0.2 * sensitivity["gradcam"], sensitivity


def test_shortcut_model_is_flagged(demo, shortcut):
    """Positives with the planted marker: the shortcut model's best map puts >= 0.9 of its top-10%
    mass on the marker where the marker drives the prediction; the clean model's < 0.1."""
    pre = Preprocessor(demo.preprocessing)
    marker = pre.forward_mask(marker_mask())[0].numpy() > 0.5
    methods = ["gradient", "gradient-x-input", "integrated-gradients", "guided-backprop", "gradcam", "guided-gradcam"]
    shares = {"shortcut": {m: [] for m in methods}, "clean": {m: [] for m in methods}}
    for i in range(6):
        marked = generate_case(EVAL_SEED_START + 73000 + i, positive=True, marker=True)
        unmarked = generate_case(EVAL_SEED_START + 73000 + i, positive=True, marker=False)
        x = model_space(demo, marked.volume)
        drives = lesion_probability(shortcut, x) > 0.5 > lesion_probability(shortcut, model_space(demo, unmarked.volume))
        for kind, model in (("shortcut", shortcut), ("clean", demo)):
            if kind == "shortcut" and not drives:
                continue
            for m in methods:
                maps, _, _ = attribute(model, x, m, target=1, params={"steps": 16} if m == "integrated-gradients" else None)
                shares[kind][m].append(top_mass_share(maps, marker, 0.1))
    assert len(shares["shortcut"]["gradient"]) >= 5
    best = max(methods, key=lambda m: np.mean(shares["shortcut"][m]))
    assert np.mean(shares["shortcut"][best]) >= 0.9, shares["shortcut"]
    assert np.mean(shares["clean"][best]) < 0.1
    assert max(np.mean(v) for v in shares["clean"].values()) < 0.1
