"""Validation before any pass: method parameters typed and range-checked from their declaration, files read as
stored, implausible preprocessing refused; and nothing left behind that the next run trips over."""
from __future__ import annotations

import os

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
    ({"spacing": [0, 0, 0]}, r"spacing \[0, 0, 0\] is not three numbers of millimetres above 0"),
    ({"spacing": [1.0, -1.0, 1.0]}, "spacing"), ({"spacing": [1.0, 1.0]}, "spacing"),
    ({"spatial_size": [64, 64, 0]}, "spatial_size .* whole numbers of voxels from 1"),
    ({"spatial_size": [64.5, 64, 64]}, "size"),
    ({"orientation": "RAX"}, "orientation 'RAX' is not three axis codes"), ({"orientation": "RRS"}, "orientation"),
])
def test_implausible_preprocessing_is_refused_before_any_pass(demo, positive_case, overrides, message):
    from xaiexplain import explain
    with pytest.raises(XAIError, match=message) as err:
        explain(demo, positive_case.volume, ["gradient"], preprocessing=overrides)
    assert "\n" not in str(err.value)


def _nifti(path, array, flat_axis=None):
    """A NIfTI-1 file of ``array``; ``flat_axis``: that axis' voxel size written as 0 in the header (pixdim)."""
    import gzip
    import struct

    import nibabel as nib
    import numpy as np
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4)), str(path))
    if flat_axis is not None:
        raw = bytearray(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
        raw[80 + 4 * flat_axis:84 + 4 * flat_axis] = struct.pack("<f", 0.0)  # pixdim[1 + axis], from byte 76
        path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_files_are_read_as_stored_not_as_the_reader_repairs_them(tmp_path, suffix):
    import gzip
    import hashlib

    import numpy as np

    from xaiexplain.core.volume import read_volume
    rng = np.random.default_rng(0)
    data = rng.random((24, 24, 24)).astype(np.float32)
    good = _nifti(tmp_path / f"good{suffix}", data)
    assert read_volume(good).array.shape == (1, 24, 24, 24)
    holes = data.copy()
    holes[3, 4, 5], holes[6, 7, 8] = np.nan, np.inf
    with pytest.raises(XAIError, match="holds 2 NaN or infinite voxels"):
        read_volume(_nifti(tmp_path / f"nan{suffix}", holes))
    raw = good.read_bytes()
    if suffix == ".nii.gz":
        raw = gzip.compress(gzip.decompress(raw))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) // 2])
    digest = hashlib.sha256(cut.read_bytes()).hexdigest()
    with pytest.raises(XAIError, match="is truncated or corrupt") as err:
        read_volume(cut)
    assert "\n" not in str(err.value) and hashlib.sha256(cut.read_bytes()).hexdigest() == digest
    with pytest.raises(XAIError, match=r"voxel size \[1.0, 0.0, 1.0\] mm"):
        read_volume(_nifti(tmp_path / f"flat{suffix}", data, flat_axis=1))


def test_a_run_killed_while_writing_leaves_nothing_the_next_run_trips_over(tmp_path, demo, positive_case):
    import subprocess
    import sys

    from xaiexplain import explain
    from xaiexplain.io.outputs import STAGING_PREFIX, write_results
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    stale = tmp_path / f"{STAGING_PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (stale / "gradient.nrrd").write_bytes(b"half written")
    running = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-xyz"  # a live run's: left alone
    running.mkdir()
    results = explain(demo, positive_case.volume, ["gradient"])
    write_results(tmp_path / "out", positive_case.volume, results, previews=False)
    assert not stale.exists() and running.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gradient.nrrd", "summary.json"]
