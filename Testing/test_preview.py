"""Previews: planes in patient space (RAS, radiological display), positions in mm, orientation letters, shared
slices, outlines (solid for the ROI, dashed for the shortcut region) and the signed colour map."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from xaiexplain.core.result import Attribution  # noqa: E402
from xaiexplain.core.volume import Volume  # noqa: E402
from xaiexplain.io import preview  # noqa: E402

# a permuted, flipped grid (directions in LPS, as ITK stores them): i runs anterior, j left, k superior
DIRECTION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # columns: LPS directions of i, j, k
SPACING, ORIGIN, SHAPE = np.array([2.0, 1.5, 3.0]), np.array([10.0, -20.0, 5.0]), (20, 24, 16)


def _volume(array) -> Volume:
    return Volume(np.asarray(array, np.float32)[None], SPACING.copy(), ORIGIN.copy(), DIRECTION.copy())


def _lps(index) -> np.ndarray:
    return ORIGIN + DIRECTION @ (SPACING * np.asarray(index, float))


def _attribution(array, signed=True, **extra) -> Attribution:
    return Attribution(map=_volume(array), method="gradient", signed=signed, params={}, target={"name": "lesion"},
                       prediction={}, timings={}, versions={}, seed=0, model={}, **extra)


def test_the_ras_array_runs_right_anterior_superior_and_positions_are_in_mm():
    voxel = (3, 17, 11)
    array = np.zeros(SHAPE)
    array[voxel] = 1.0
    ras_array, spacing = preview._ras_array(_volume(array))
    found = np.argwhere(ras_array == 1.0)[0]
    index, ras_mm = preview._to_ras_index(_volume(array), voxel)
    assert tuple(found) == tuple(index)
    lps = _lps(voxel)
    np.testing.assert_allclose(ras_mm, [-lps[0], -lps[1], lps[2]])
    # moving one voxel to the patient's right (R: LPS x decreasing) moves one step up the first RAS axis
    right = np.zeros(SHAPE)
    right[voxel[0], voxel[1] - 1, voxel[2]] = 1.0  # j runs to the left (LPS x): j - 1 is one step right
    assert tuple(np.argwhere(preview._ras_array(_volume(right))[0] == 1.0)[0]) == (found[0] + 1, found[1], found[2])
    assert sorted(spacing) == sorted(SPACING)


def test_a_runs_previews_share_their_slices_where_the_evidence_is_densest_together():
    a, b = np.zeros(SHAPE), np.zeros(SHAPE)
    a[2:7, 2:7, 2:7] = 1.0  # a broad blob
    b[2:7, 2:7, 2:7] = 100.0  # the same place, a hundred times stronger: scaled to its own maximum
    b[15, 20, 12] = 90.0  # and one strong voxel elsewhere
    point = preview.preview_point([_attribution(a), _attribution(b)])
    assert all(2 <= v <= 6 for v in point)


def test_the_signed_colour_map_hides_the_centre_in_grey_and_is_saturated_from_the_threshold():
    cmap = preview.signed_colormap(0.2)
    grey = cmap(0.5)[:3]
    np.testing.assert_allclose(grey, [0.5, 0.5, 0.5])
    just_above, just_below = cmap(0.5 + 0.21 / 2)[:3], cmap(0.5 - 0.21 / 2)[:3]
    assert just_above[0] > 0.9 and just_above[2] < 0.1  # orange: no pale start
    assert just_below[2] > 0.9 and just_below[0] < 0.2  # blue
    colours = cmap(np.linspace(0, 1, 256))[:, :3]
    assert (colours.min(1) < 0.6).all()  # nothing near white, which could pass for bright anatomy


def test_a_preview_names_planes_positions_and_directions_and_draws_both_outlines(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig))
    image = _volume(np.random.default_rng(0).normal(size=SHAPE))
    heat = np.zeros(SHAPE)
    heat[8:13, 9:15, 5:10] = 1.0
    heat[0:2, 0:3, 0:2] = -0.8
    roi = np.zeros(SHAPE, np.uint8)
    roi[7:14, 8:16, 4:11] = 1
    shortcut = np.zeros(SHAPE, np.uint8)
    shortcut[9:12, 10:13, 6:9] = 3
    attribution = _attribution(heat, shortcut_region=_volume(shortcut))
    point = (10, 12, 7)
    path = preview.render_preview(image, attribution, tmp_path / "p.png", point=point, outline=_volume(roi))
    assert path.is_file()
    fig = closed[0]
    panels = fig.axes[:3]
    _, ras_mm = preview._to_ras_index(image, point)
    assert [ax.get_title() for ax in panels] == [f"axial, S {ras_mm[2]:+.1f} mm", f"coronal, A {ras_mm[1]:+.1f} mm",
                                                 f"sagittal, R {ras_mm[0]:+.1f} mm"]
    letters = [[t.get_text() for t in ax.texts] for ax in panels]
    assert letters == [list("RLPA"), list("RLIS"), list("PAIS")]
    assert panels[0].xaxis_inverted() and panels[1].xaxis_inverted() and not panels[2].xaxis_inverted()
    styles = {(tuple(np.round(c.get_edgecolor()[0][:3], 2)), c.get_linestyle()[0][1] is not None)
              for ax in panels for c in ax.collections if hasattr(c, "get_linestyle")}
    assert ((0.0, 0.9, 1.0), False) in styles  # the ROI: solid cyan
    assert ((0.22, 1.0, 0.08), True) in styles  # the shortcut region: dashed green
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["ROI", "shortcut check: suspect evidence"]
    words = " ".join(t.get_text() for t in fig.texts)
    assert "red for and blue against the target" in words and "not drawn" in words


@pytest.mark.parametrize("signed", [True, False])
def test_values_below_the_threshold_are_not_drawn(tmp_path, monkeypatch, signed):
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig))
    heat = np.zeros(SHAPE)
    heat[10, 12, 7] = 1.0
    heat[10, 13, 7] = 0.05  # under a fifth of the range: hidden
    preview.render_preview(_volume(np.ones(SHAPE)), _attribution(heat, signed=signed), tmp_path / "t.png",
                           point=(10, 12, 7))
    overlay = closed[0].axes[0].images[1].get_array()
    assert int((~np.ma.getmaskarray(overlay)).sum()) == 1
