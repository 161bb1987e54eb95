"""Networks that end in softmax or sigmoid: their output is taken as probabilities once, never twice."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from xaiexplain import XAIError, explain, load_model
from xaiexplain.core.volume import Volume
from xaiexplain.methods.machinery.scoring import Scorer


class _Classifier(nn.Module):
    def __init__(self, classes: int, end):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                  nn.Linear(4, classes))
        self.end = end

    def forward(self, x):
        return self.end(self.body(x) * 4)


def _volume(seed=0):
    return Volume(torch.rand(1, 12, 12, 12, generator=torch.Generator().manual_seed(seed)).numpy())


def _output(net, volume):
    with torch.no_grad():
        return net(torch.as_tensor(volume.array)[None]).double()[0]


def test_a_softmax_output_is_reported_and_scored_as_the_probabilities_it_is():
    net, volume = _Classifier(3, nn.Softmax(dim=1)).eval(), _volume()
    model = load_model(net, device="cpu")
    result = explain(model, volume, ["gradient"])[0]
    expected = _output(net, volume)
    assert model.output_kind == "probabilities"
    assert result.prediction["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert result.prediction["output_kind"] == "probabilities" and result.prediction["logits"] is None
    assert any("taken as probabilities" in note for note in model.notes)
    scorer = Scorer.for_model(model, torch.as_tensor(volume.array)[None], target=0, output="probability")
    assert scorer.base == pytest.approx(float(expected[0]), abs=1e-6)


def test_a_sigmoid_output_is_the_probability_of_class_one():
    net, volume = _Classifier(1, nn.Sigmoid()).eval(), _volume()
    model = load_model(net, device="cpu")
    result = explain(model, volume, ["gradient"], target=0)[0]
    p = float(_output(net, volume)[0])
    assert model.output_kind == "probabilities"
    assert result.prediction["probabilities"] == pytest.approx([1 - p, p], abs=1e-6)


def test_logits_that_happen_to_lie_in_the_unit_interval_stay_logits():
    class Squashed(_Classifier):  # outputs in (0, 1) that are not a sigmoid's: logits all the same
        def forward(self, x):
            return 0.5 + 0.1 * torch.tanh(self.body(x))

    net, volume = Squashed(1, None).eval(), _volume()
    model = load_model(net, device="cpu")
    result = explain(model, volume, ["gradient"], target=0)[0]
    logit = float(_output(net, volume)[0])
    assert model.output_kind == "logits"
    assert result.prediction["probabilities"][1] == pytest.approx(1 / (1 + torch.exp(torch.tensor(-logit)).item()))


def test_the_demo_classifier_outputs_logits(demo, positive_case):
    result = explain(demo, positive_case.volume, ["gradient"])[0]
    assert demo.output_kind == "logits" and result.prediction["output_kind"] == "logits"
    logits = torch.tensor(result.prediction["logits"])
    assert result.prediction["probabilities"] == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-6)


def _program(tmp_path, net, volume, meta):
    x = torch.as_tensor(volume.array)[None]
    torch.export.save(torch.export.export(net, (x,)), tmp_path / "net.pt2")
    (tmp_path / "net.json").write_text(json.dumps(meta))
    return tmp_path / "net.pt2"


def test_metadata_says_what_the_output_is_and_wins_over_detection(tmp_path):
    net, volume = _Classifier(3, nn.Softmax(dim=1)).eval(), _volume()
    path = _program(tmp_path, net, volume, {"output": "logits", "class_names": ["a", "b", "c"]})
    model = load_model(path, device="cpu")
    result = explain(model, volume, ["gradient"])[0]
    assert model.output_kind == "logits"  # as the metadata says, though it looks like probabilities
    assert result.prediction["probabilities"] == pytest.approx(
        torch.softmax(_output(net, volume), 0).tolist(), abs=1e-6)
    assert load_model(path, device="cpu", output="probabilities").output_kind == "probabilities"


@pytest.mark.parametrize("meta, message", [({"output": "probs"}, "unknown model output kind 'probs'"),
                                           ({"classes": ["a"]}, r"unknown keys \['classes'\]")])
def test_bad_metadata_is_refused_in_one_line(tmp_path, meta, message):
    net, volume = _Classifier(3, nn.Softmax(dim=1)).eval(), _volume()
    path = _program(tmp_path, net, volume, meta)
    with pytest.raises(XAIError, match=message) as err:
        load_model(path, device="cpu")
    assert "\n" not in str(err.value)


def test_a_bundle_says_probabilities_in_monai_metadata(tmp_path, demo):
    import shutil

    from xaiexplain.protocol import demo_bundle
    folder = tmp_path / "bundle"
    shutil.copytree(demo_bundle(), folder)
    meta_file = folder / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["type"] = "probabilities"
    meta_file.write_text(json.dumps(meta))
    assert load_model(folder, device="cpu").output_kind == "probabilities"
    assert demo.output_kind in (None, "logits")
