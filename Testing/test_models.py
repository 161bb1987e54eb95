"""Every model format: same prediction, same maps; layer methods where the format exposes layers."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import pearson

from xaiexplain import PreprocessSpec, XAIError, attribute, explain, load_model
from xaiexplain.protocol import demo_bundle


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo, demo_x):
    folder = tmp_path_factory.mktemp("formats")
    net = demo.network
    program = torch.export.export(net, (torch.cat([demo_x, demo_x]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(program, folder / "model.pt2")
    torch.jit.trace(net, demo_x).save(folder / "model.ts")
    side = {"class_names": demo.class_names, "in_channels": 1, "preprocessing": demo.preprocessing.to_dict()}
    for name in ("model.pt2", "model.ts"):
        (folder / name).with_suffix(".json").write_text(json.dumps(side))
    return folder


def test_all_formats_predict_the_same(demo, exported, positive_case):
    expected = explain(demo, positive_case.volume, "gradient")[0]
    for path in ("model.pt2", "model.ts"):
        model = load_model(exported / path, device="cpu")
        assert model.class_names == demo.class_names and model.preprocessing == demo.preprocessing
        got = explain(model, positive_case.volume, "gradient")[0]
        assert got.prediction["predicted_class"] == expected.prediction["predicted_class"]
        assert got.prediction["probabilities"] == pytest.approx(expected.prediction["probabilities"], abs=1e-5)
        assert pearson(got.array, expected.array) > 0.9999
        assert got.model["format"] == ("export" if path.endswith("pt2") else "torchscript")
        assert len(got.model["sha256"]) == 64


@pytest.mark.parametrize("method", ["gradcam", "guided-backprop", "cam"])
def test_layer_methods_work_on_an_exported_program(demo, exported, demo_x, method):
    program = load_model(exported / "model.pt2", device="cpu")
    a, info_a, _ = attribute(demo, demo_x, method, target=1)
    b, info_b, _ = attribute(program, demo_x, method, target=1)
    assert info_a.get("layer") == info_b.get("layer")
    assert pearson(a, b) > 0.9999


@pytest.mark.parametrize("method", ["gradcam", "guided-backprop", "lrp"])
def test_layer_methods_on_torchscript_run_on_its_conversion_to_a_program(demo, exported, demo_x, method):
    model = load_model(exported / "model.ts", device="cpu")
    assert model.format == "torchscript"
    b, info, _ = attribute(model, demo_x, method, target=1)
    # the conversion's layers are the weighted ones (a convolution's own output), named as in the module
    a, _, _ = attribute(demo, demo_x, method, target=1, layer=info.get("layer"))
    assert pearson(a, b) > 0.9999
    assert model.format == "export" and model.converted_from == "torchscript"
    assert any("TorchScript converted" in note for note in model.notes)


class _DataDependentLoop(torch.nn.Module):
    """A network torch's TorchScript converter cannot restate (a loop on a tensor's value)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3)

    def forward(self, x):
        out = self.conv(x)
        while bool(out.mean() > 0.0):
            out = out - 1.0
        return out.mean((2, 3, 4))


def test_layer_methods_refuse_a_torchscript_that_cannot_be_converted_and_say_which_formats_work(tmp_path):
    torch.jit.script(_DataDependentLoop()).save(tmp_path / "loop.ts")
    model = load_model(tmp_path / "loop.ts", device="cpu")
    x = torch.rand(1, 1, 12, 12, 12)
    for method in ("gradcam", "guided-backprop", "lrp"):
        with pytest.raises(XAIError, match="TorchScript.*converting.*failed.*MONAI bundle.*torch.export") as err:
            attribute(model, x, method, target=0)
        assert "\n" not in str(err.value)
    assert model.format == "torchscript"
    assert attribute(model, x, "integrated-gradients", target=0, params={"steps": 4})[0].shape == x.shape


def test_bundle_metadata_is_read(demo):
    assert demo.format == "bundle" and demo.class_names == ["healthy", "lesion"]
    assert demo.in_channels == 1 and demo.task == "classification"
    assert demo.preprocessing.spacing == [3.0, 3.0, 3.0] and demo.preprocessing.orientation == "RAS"


def test_bundle_preprocessing_is_read_from_monai_transforms_without_our_section(tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(demo_bundle(), folder)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    own = meta.pop("xaiexplain")["preprocessing"]
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    model = load_model(folder, device="cpu")
    assert model.preprocessing == PreprocessSpec.from_dict(own)


def test_corrupt_and_wrong_model_files_give_one_line_errors(tmp_path, demo):
    cases = {}
    (tmp_path / "garbage.ts").write_bytes(b"\x00not a model" * 100)
    cases["garbage.ts"] = "not a TorchScript"
    torch.save(demo.network.state_dict(), tmp_path / "weights.pt")
    cases["weights.pt"] = "weights only"
    (tmp_path / "broken.pt2").write_bytes(b"PK\x03\x04 truncated")
    cases["broken.pt2"] = "torch.export"
    cases["missing.ts"] = "does not exist"
    bad_bundle = tmp_path / "bad_bundle"
    shutil.copytree(demo_bundle(), bad_bundle)
    (bad_bundle / "configs" / "inference.json").write_text("{ not json")
    cases["bad_bundle"] = "not valid JSON"
    torn = tmp_path / "torn_bundle"
    shutil.copytree(demo_bundle(), torn)
    (torn / "models" / "model.pt").write_bytes(b"torn")
    cases["torn_bundle"] = "cannot read weights"
    for name, words in cases.items():
        with pytest.raises(XAIError, match=words) as err:
            load_model(tmp_path / name)
        assert "\n" not in str(err.value), name


def test_a_module_from_python_is_not_changed(positive_case):
    from xaiexplain.synthlesion.demo_model import SynthLesionNet
    from xaiexplain.synthlesion.train import DEMO_PREPROCESSING

    net = SynthLesionNet().train()  # a user's model, left in training mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    explain(net, positive_case.volume, ["gradcam", "guided-backprop"], preprocessing=DEMO_PREPROCESSING)
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics untouched
