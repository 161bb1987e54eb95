"""Method parameters are typed and range-checked from the method's own declaration, before any pass."""
from __future__ import annotations

import pytest

from xaiexplain import XAIError, attribute, get_method
from xaiexplain.cli.main import main
from xaiexplain.core.volume import write_volume
from xaiexplain.protocol import demo_bundle

# (method, parameter, value, what the error says): one line per malformed value
BAD = [
    ("smoothgrad", "samples", "abc", "is not a whole number.*of 1 or more"),
    ("smoothgrad", "samples", -5, "is out of range.*of 1 or more"),
    ("smoothgrad", "samples", 0, "is out of range"),
    ("smoothgrad", "samples", 2.5, "is not a whole number"),
    ("smoothgrad", "samples", True, "is not a whole number"),
    ("smoothgrad", "noise_level", "lots", "is not a number.*of 0.0 or more"),
    ("smoothgrad", "noise_level", float("nan"), "is not a number"),
    ("smoothgrad", "noise_level", -0.1, "is out of range"),
    ("integrated-gradients", "steps", 0, "is out of range.*of 1 or more"),
    ("integrated-gradients", "batch_size", 0, "is out of range"),
    ("occlusion", "window", 0, "is out of range.*of 1 or more"),
    ("occlusion", "stride", -1, "is out of range"),
    ("occlusion", "refine", 9, "is out of range.*from 0 to 8"),
    ("occlusion", "score", "logits", "is not a choice.*probability, logit"),
    ("rise", "keep", 1.0, "is out of range.*from 0.01 to 0.99"),
    ("rise", "keep", 0, "is out of range"),
    ("lime", "kernel_width", 0, "is out of range"),
    ("lrp", "epsilon", 0, "is out of range"),
    ("lrp", "composite", "eps", "is not a choice.*epsilon-plus-flat"),
    ("lrp", "norm_rule", "skip", "is not a choice.*auto, pass, epsilon"),
    ("occlusion-regions", "keep_only", "yes", "is not true or false"),
]


@pytest.mark.parametrize("method, name, value, message", BAD)
def test_a_malformed_parameter_is_refused_naming_it_its_value_and_the_range(method, name, value, message):
    with pytest.raises(XAIError, match=f"{get_method(method).name}.{name}=.*{message}") as err:
        get_method(method).params({name: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method, name, value, expected", [
    ("smoothgrad", "samples", 3.0, 3), ("smoothgrad", "noise_level", 1, 1.0), ("occlusion", "batch_size", None, None),
    ("occlusion", "refine", 0, 0), ("rise", "keep", 0.5, 0.5), ("occlusion-regions", "keep_only", True, True),
])
def test_good_values_pass_in_the_declared_type(method, name, value, expected):
    got = get_method(method).params({name: value})[name]
    assert got == expected and type(got) is type(expected)


def test_every_declared_default_passes_its_own_check():
    from xaiexplain.methods import REGISTRY
    for method in REGISTRY.values():
        assert method.params(dict(method.defaults)) == method.defaults


def test_the_check_runs_before_any_pass(demo, demo_x):
    calls = []
    handle = demo.network.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(XAIError, match="occlusion.window=0 is out of range"):
            attribute(demo, demo_x, "occlusion", target=1, params={"window": 0})
    finally:
        handle.remove()
    assert not calls


def test_the_cli_refuses_it_in_one_line_and_writes_nothing(tmp_path, positive_case, capsys):
    image = tmp_path / "case.nrrd"
    write_volume(positive_case.volume, image)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "smoothgrad",
                 "--param", "smoothgrad.samples=abc", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: smoothgrad.samples='abc' is not a whole number")
    assert len(err.splitlines()) == 1 and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "case.nrrd"]


def test_a_method_named_twice_or_by_an_alias_runs_once(demo, positive_case):
    from xaiexplain import explain
    results = explain(demo, positive_case.volume, ["gradient", "saliency", "gradient", "gradcam", "grad-cam"])
    assert [r.method for r in results] == ["gradient", "gradcam"]
    with pytest.raises(XAIError, match="no method was given"):
        explain(demo, positive_case.volume, [])


@pytest.mark.parametrize("overrides, message", [
    ({"spacing": [0, 0, 0]}, r"spacing \[0, 0, 0\] is not three positive numbers"),
    ({"spacing": [1.0, -1.0, 1.0]}, "spacing"), ({"spacing": [1.0, 1.0]}, "spacing"),
    ({"spatial_size": [64, 64, 0]}, "spatial_size .* positive whole numbers"),
    ({"spatial_size": [64.5, 64, 64]}, "size"),
    ({"orientation": "RAX"}, "orientation 'RAX' is not three axis codes"), ({"orientation": "RRS"}, "orientation"),
])
def test_implausible_preprocessing_is_refused_before_any_pass(demo, positive_case, overrides, message):
    from xaiexplain import explain
    with pytest.raises(XAIError, match=message) as err:
        explain(demo, positive_case.volume, ["gradient"], preprocessing=overrides)
    assert "\n" not in str(err.value)
