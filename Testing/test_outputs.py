"""An output folder read back: read_results(write_results(...)) gives the attributions that were written."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xaiexplain import explain
from xaiexplain.core.result import Attribution
from xaiexplain.core.volume import Volume
from xaiexplain.errors import XAIError
from xaiexplain.io.outputs import read_region_table, read_results, write_results
from xaiexplain.protocol import REGIONS_LABELS_FILE, REGIONS_TABLE_FILE, SUMMARY_FILE, map_file


def same_rows(a: list[dict], b: list[dict], rel: float = 0.0) -> bool:
    """Region tables equal, NaN (a region not scored) equal to NaN; ``rel``: the CSV's 6 significant digits."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if set(x) != set(y):
            return False
        for key in x:
            u, v = x[key], y[key]
            if isinstance(u, float) and isinstance(v, float):
                if not (math.isnan(u) and math.isnan(v)) and not math.isclose(u, v, rel_tol=rel, abs_tol=rel * 1e-3):
                    return False
            elif u != v:
                return False
    return True


def same_grid_exactly(a: Volume, b: Volume) -> bool:
    return (a.shape == b.shape and np.allclose(a.spacing, b.spacing, rtol=0, atol=1e-9)
            and np.allclose(a.origin, b.origin, rtol=0, atol=1e-9)
            and np.allclose(a.direction, b.direction, rtol=0, atol=1e-9))


@pytest.fixture(scope="module")
def region_results(demo, positive_case):
    from xaiexplain.synthlesion.synth import region_names

    present = set(np.unique(positive_case.labels.array))
    names = {k: v for k, v in region_names().items() if k in present}
    return explain(demo, positive_case.volume, ["gradient", "occlusion-regions"], target="lesion", device="cpu",
                   regions=positive_case.labels, region_names=names,
                   params={"occlusion-regions": {"baseline": "zeros"}})


def test_read_results_is_the_inverse_of_write_results(region_results, positive_case, tmp_path):
    write_results(tmp_path / "out", positive_case.volume, region_results, {"inputs": ["case.nrrd"]}, previews=False)
    back = read_results(tmp_path / "out")
    assert [b.method for b in back] == ["gradient", "occlusion-regions"]
    for written, read in zip(region_results, back):
        assert np.array_equal(read.map.array, written.map.array) and read.map.array.dtype == written.map.array.dtype
        assert same_grid_exactly(read.map, written.map) and read.map.channel_names == written.map.channel_names
        for field in ("method", "signed", "params", "target", "prediction", "timings", "versions", "seed", "model",
                      "notes"):
            assert getattr(read, field) == getattr(written, field), field
        assert read.info == json.loads(json.dumps(written.to_dict()["info"]))  # as JSON holds it
        assert read.channel_maps is None and written.channel_maps is None
        assert same_rows(read.regions, written.regions)
        assert np.array_equal(read.region_labels.array, written.region_labels.array)
        assert same_grid_exactly(read.region_labels, written.region_labels)
        assert read.to_dict() == written.to_dict()
    # occlusion-regions leaves some regions unscored (NaN) and adds its own columns; both survive
    rows = back[1].regions
    assert "logit_drop" in rows[0] or len(rows[0]) > 8


def test_region_tables_from_the_csv_when_the_summary_has_none(region_results, positive_case, tmp_path):
    out = tmp_path / "out"
    write_results(out, positive_case.volume, region_results, previews=False)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    for item in summary["results"]:
        del item["regions"]
    (out / SUMMARY_FILE).write_text(json.dumps(summary))
    back = read_results(out)
    for written, read in zip(region_results, back):
        assert same_rows(read.regions, written.regions, rel=1e-5)
        assert read.region_labels is not None
    assert same_rows(read_region_table(out / REGIONS_TABLE_FILE, "gradient"), region_results[0].regions, rel=1e-5)


def test_channel_maps_and_a_folder_without_regions(positive_case, tmp_path):
    volume = positive_case.volume
    rng = np.random.default_rng(1)
    per_channel = rng.normal(size=(2,) + volume.shape).astype(np.float32)
    channels = ["t2", "flair"]  # not in alphabetical order: the recorded order wins
    attribution = Attribution(
        map=volume.with_array(per_channel.sum(0, keepdims=True), ["gradient"]), method="gradient", signed=True,
        params={}, target={"class": 1, "name": "lesion"}, prediction={"task": "classification"},
        timings={"seconds": 0.5}, versions={"xaiexplain": "test"}, seed=3, model={"source": "m"},
        channel_maps=volume.with_array(per_channel, channels), info={"channels": channels}, notes=["a note"])
    write_results(tmp_path / "out", volume, [attribution], previews=False)
    assert (tmp_path / "out" / map_file("gradient", "flair")).is_file()
    assert not (tmp_path / "out" / REGIONS_LABELS_FILE).exists()
    (back,) = read_results(tmp_path / "out")
    assert back.channel_maps.channel_names == channels
    assert np.array_equal(back.channel_maps.array, per_channel) and same_grid_exactly(back.channel_maps, volume)
    assert back.regions is None and back.region_labels is None
    assert back.to_dict() == attribution.to_dict()
    attribution.info = {}  # no recorded order: the channel files, by name
    write_results(tmp_path / "again", volume, [attribution], previews=False)
    (back,) = read_results(tmp_path / "again")
    assert back.channel_maps.channel_names == ["flair", "t2"]
    assert np.array_equal(back.channel_maps.array, per_channel[::-1])


def test_a_folder_without_results_or_with_a_map_missing(positive_case, tmp_path):
    with pytest.raises(XAIError, match=SUMMARY_FILE):
        read_results(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"results": [{"method": "gradcam", "signed": False}]}))
    with pytest.raises(XAIError, match="no map for 'gradcam'"):
        read_results(tmp_path)
