"""Region sources (user labels + names, supervoxels, Harvard-Oxford) and the region summary of any map."""
from __future__ import annotations

import numpy as np
import pytest

from xaiexplain import Volume, XAIError, write_volume
from xaiexplain.regions import (Regions, harvard_oxford_regions, label_regions, paint, read_region_names, region_table,
                                supervoxel_regions)


def grid(shape=(20, 24, 16), spacing=(2.0, 1.5, 3.0)):
    return Volume(np.zeros((1,) + shape, np.float32), spacing, (10.0, -5.0, 3.0),
                  np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], float))


def boxes(reference: Volume) -> np.ndarray:
    labels = np.zeros(reference.shape, np.int32)
    labels[2:8, 2:10, 2:6] = 3
    labels[10:18, 4:20, 6:14] = 7
    return labels


def test_names_from_csv_with_and_without_header_and_from_a_slicer_colour_table(tmp_path):
    (tmp_path / "a.csv").write_text("label,name\n3,Left hippocampus\n7,Right amygdala\n")
    (tmp_path / "b.csv").write_text("3,Left hippocampus\n7,Right amygdala\n")
    (tmp_path / "c.txt").write_text("# Color table file\n# 2 values\n0 Background 0 0 0 0\n"
                                    "3 Left_hippocampus 220 216 20 255\n7 Right_amygdala 103 255 255 255\n")
    assert read_region_names(tmp_path / "a.csv") == {3: "Left hippocampus", 7: "Right amygdala"}
    assert read_region_names(tmp_path / "b.csv") == {3: "Left hippocampus", 7: "Right amygdala"}
    assert read_region_names(tmp_path / "c.txt") == {0: "Background", 3: "Left_hippocampus", 7: "Right_amygdala"}
    (tmp_path / "d.csv").write_text("id,name\nthree,hippocampus\n")
    with pytest.raises(XAIError, match="cannot read the region names row"):
        read_region_names(tmp_path / "d.csv")


def test_user_labels_on_the_grid_and_resampled_from_another_grid(tmp_path):
    ref = grid()
    labels = ref.with_array(boxes(ref)[None])
    regions = label_regions(labels, {3: "a", 7: "b", 9: "unused"}, ref)
    assert regions.ids() == [3, 7] and regions.names == {3: "a", 7: "b"} and not regions.info["notes"]
    # the same labels written on a finer grid covering the same space come back (nearest neighbour) close to the truth
    fine = Volume(np.zeros((1, 40, 48, 32), np.float32), ref.spacing / 2,
                  ref.origin - ref.direction @ (ref.spacing / 4), ref.direction)
    fine_labels = np.repeat(np.repeat(np.repeat(boxes(ref), 2, 0), 2, 1), 2, 2)
    write_volume(fine.with_array(fine_labels[None].astype(np.int16)), tmp_path / "labels.nrrd")
    moved = label_regions(tmp_path / "labels.nrrd", {3: "a", 7: "b"}, ref)
    assert moved.labels.same_grid(ref) and "resampled" in moved.info["notes"][0]
    assert (moved.labels.array[0] == boxes(ref)).mean() > 0.99


def test_bad_user_labels_give_one_line_errors(tmp_path):
    ref = grid()
    labels = ref.with_array(boxes(ref)[None])
    with pytest.raises(XAIError, match="have no names") as err:
        label_regions(labels, None, ref)
    assert "\n" not in str(err.value)
    with pytest.raises(XAIError, match=r"label\(s\) 7 .* no name"):
        label_regions(labels, {3: "a"}, ref)
    elsewhere = Volume(labels.array, ref.spacing, ref.origin + 500.0, ref.direction)
    with pytest.raises(XAIError, match="does not lie on the input volume"):
        label_regions(elsewhere, {3: "a", 7: "b"}, ref)
    with pytest.raises(XAIError, match="non-integer"):
        label_regions(ref.with_array(labels.array * 0.5), {3: "a", 7: "b"}, ref)
    with pytest.raises(XAIError, match="does not exist"):
        label_regions(labels, tmp_path / "missing.csv", ref)


def test_region_table_numbers_against_a_hand_count():
    ref = grid()
    labels = boxes(ref)
    regions = Regions(ref.with_array(labels[None]), {3: "a", 7: "b"}, "test")
    rng = np.random.default_rng(0)
    attribution = rng.normal(size=ref.shape).astype(np.float32)
    attribution[labels == 7] += 1.0
    rows = region_table(attribution, regions)
    assert [r["id"] for r in rows] == [7, 3] and [r["rank"] for r in rows] == [1, 2]
    voxel_ml = 2.0 * 1.5 * 3.0 / 1000
    positive = np.clip(attribution, 0, None)
    for row in rows:
        inside = labels == row["id"]
        assert row["volume_ml"] == pytest.approx(inside.sum() * voxel_ml, rel=1e-4)
        assert row["sum"] == pytest.approx(attribution[inside].sum(dtype=np.float64), rel=1e-6)
        assert row["mean"] == pytest.approx(attribution[inside].mean(dtype=np.float64), rel=1e-6)
        assert row["positive_share"] == pytest.approx(positive[inside].sum() / positive.sum(), rel=1e-6)
        assert row["score"] == row["sum"]
    scored = region_table(attribution, regions, scores={3: 0.5})  # a region method's own scores rank first
    assert [(r["id"], r["rank"]) for r in scored] == [(3, 1), (7, 2)] and np.isnan(scored[1]["score"])
    painted = paint(labels, {3: 0.5, 7: -1.0})
    assert painted[labels == 3].min() == 0.5 and painted[labels == 7].max() == -1.0 and painted[labels == 0].max() == 0


def test_supervoxels_tile_the_foreground_and_are_deterministic(positive_case):
    volume = positive_case.volume
    a = supervoxel_regions(volume, n_segments=100)
    b = supervoxel_regions(volume, n_segments=100)
    assert np.array_equal(a.labels.array, b.labels.array)
    ids = a.ids()
    assert 50 <= len(ids) <= 200
    brain = volume.array[0] > 0.5 * np.percentile(volume.array[0], 99)
    assert (a.labels.array[0][brain] > 0).mean() > 0.95  # the brain is covered
    sizes = np.bincount(a.labels.array[0].ravel())[1:]
    assert np.median(sizes[sizes > 0]) > 100  # supervoxels, not speckle


def test_harvard_oxford_in_mni_space_names_lateralised_regions(positive_case):
    regions = harvard_oxford_regions(positive_case.volume, registration="none")
    names = set(regions.names.values())
    assert {"Left_Hippocampus", "Right_Hippocampus", "Left_Frontal_Pole", "Brain-Stem"} <= names
    assert len(regions.ids()) > 90
    with pytest.raises(XAIError, match="unknown atlas registration"):
        harvard_oxford_regions(positive_case.volume, registration="rigid-ish")
