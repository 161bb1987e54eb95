"""Shared fixtures: the shipped demo models, SynthLesion cases, small MONAI networks."""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", category=UserWarning, module="monai")
warnings.filterwarnings("ignore", category=FutureWarning)

from xaiexplain import Preprocessor, load_model  # noqa: E402
from xaiexplain.protocol import demo_bundle  # noqa: E402
from xaiexplain.synthlesion.synth import generate_case  # noqa: E402
from xaiexplain.synthlesion.train import EVAL_SEED_START  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def as_numpy(a) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def pearson(a, b) -> float:
    a, b = as_numpy(a).ravel(), as_numpy(b).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="session")
def demo():
    """The shipped SynthLesion classifier (a MONAI bundle), on the CPU."""
    return load_model(demo_bundle("synthlesion_classifier"), device="cpu")


@pytest.fixture(scope="session")
def shortcut():
    return load_model(demo_bundle("synthlesion_shortcut"), device="cpu")


@pytest.fixture(scope="session")
def positive_case():
    return generate_case(EVAL_SEED_START + 7, positive=True)


@pytest.fixture(scope="session")
def demo_x(demo, positive_case):
    """The positive case in the demo model's input space, batch of one."""
    return Preprocessor(demo.preprocessing).forward(positive_case.volume)[None]


@pytest.fixture(scope="session")
def harness():
    """Headless Slicer (slicer-core): scene, logics, one slice view and one 3D view."""
    pytest.importorskip("slicer")
    from slicer_harness import SlicerHarness
    return SlicerHarness.shared()


@pytest.fixture()
def logic(harness):
    """The module's Qt-free logic on the harness's scene, emptied before and after (worker: this Python)."""
    from XAIExplainLib.logic import ExplainLogicBase

    harness.clear()
    yield ExplainLogicBase(harness.scene, vrLogic=harness.vrLogic, python=sys.executable)
    harness.clear()


@pytest.fixture()
def scene(harness):
    harness.clear()
    yield harness.scene
    harness.clear()


@pytest.fixture
def boxes_wherever_they_match(monkeypatch):
    """The perturbation scorer takes boxes wherever they match full passes, not where a timed probe found them
    faster: on tiny networks, or a busy CPU, the measured choice could go either way from one run to the next."""
    from xaiexplain.methods.machinery import scoring

    monkeypatch.setattr(scoring, "CHOSEN_BY_TIME", False)
