"""Bad input gets a clear one-line error, nothing is written, and the input is never modified."""
from __future__ import annotations

import numpy as np
import pytest

from xaiexplain import XAIError, explain
from xaiexplain.cli.main import main


def one_line_error(call, words):
    with pytest.raises(XAIError, match=words) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_volumes(demo, positive_case):
    nan = positive_case.volume.with_array(positive_case.volume.array.copy())
    nan.array[0, 3, 4, 5] = np.nan
    one_line_error(lambda: explain(demo, nan, "gradient"), "NaN")
    flat = positive_case.volume.with_array(np.full_like(positive_case.volume.array, 7.0))
    one_line_error(lambda: explain(demo, flat, "gradient"), "constant")
    two = [positive_case.volume, positive_case.counterfactual]
    one_line_error(lambda: explain(demo, two, "gradient"), "expects 1 input channel")


def test_bad_requests(demo, positive_case):
    vol = positive_case.volume
    one_line_error(lambda: explain(demo, vol, "magic-map"), "unknown method 'magic-map'.*gradcam")
    one_line_error(lambda: explain(demo, vol, "gradient", target=5), "class 5 is out of range.*0..1")
    one_line_error(lambda: explain(demo, vol, "gradient", target="tumour"), "unknown class 'tumour'")
    one_line_error(lambda: explain(demo, vol, "gradcam", layer="features.9"), "layer 'features.9' not found.*features")
    one_line_error(lambda: explain(demo, vol, "gradient", versus=1, target=1), "two different classes")
    one_line_error(lambda: explain(demo, vol, "smoothgrad", params={"smoothgrad": {"sample": 3}}), "no parameter sample")
    one_line_error(lambda: explain(demo, vol, "gradient", roi=positive_case.lesion_mask), "segmentation model")


def test_inputs_are_never_modified(demo, positive_case):
    vol = positive_case.volume
    before = vol.array.copy()
    geometry = (vol.spacing.copy(), vol.origin.copy(), vol.direction.copy())
    explain(demo, vol, ["gradient", "gradcam", "guided-backprop", "integrated-gradients"],
            params={"integrated-gradients": {"steps": 4}})
    assert np.array_equal(vol.array, before)
    assert all(np.array_equal(a, b) for a, b in zip(geometry, (vol.spacing, vol.origin, vol.direction)))


def test_cli_error_exits_non_zero_and_writes_nothing(tmp_path, positive_case, capsys):
    from xaiexplain import write_volume
    from xaiexplain.protocol import demo_bundle

    image = tmp_path / "case.nrrd"
    write_volume(positive_case.volume, image)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "gradcam",
                 "--method", "gradcam", "--layer", "nope", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: layer 'nope' not found") and err.count("\n") == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["case.nrrd"]
