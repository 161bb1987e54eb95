"""The MRML bridge against Slicer's own C++ (slicer-core): geometry, overlays rendered by Slicer, regions, MRB.

Rendering goes through Slicer's slice logic (reslicing, colour mapping and layer
blending) and 3D displayable managers (volume rendering, CPU ray casting),
offscreen; the assertions are on the pixels.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from XAIExplainLib import colormaps, display, regions, volumenodes  # noqa: E402
from XAIExplainLib.volumenodes import readVolumeFile, writeVolumeFile  # noqa: E402


def rotation(ax, ay, az):
    cx, cy, cz, sx, sy, sz = np.cos(ax), np.cos(ay), np.cos(az), np.sin(ax), np.sin(ay), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


GEOMETRIES = {
    # name: (spacing, origin LPS, direction LPS columns)
    "anisotropic": ((0.8, 1.5, 4.0), (10.0, -20.0, 30.0), np.diag([-1.0, -1.0, 1.0])),
    "oblique": ((1.2, 1.0, 2.5), (-5.0, 7.5, 12.0), rotation(0.3, -0.2, 0.5)),
    "lps-stored": ((1.0, 1.0, 1.0), (-90.0, -120.0, -70.0), np.eye(3)),  # i -> L, j -> P, as DICOM stores it
}


def engine_volume(geometry: str, shape=(24, 20, 16), seed=0):
    from xaiexplain.core.volume import Volume

    spacing, origin, direction = GEOMETRIES[geometry]
    array = np.random.default_rng(seed).normal(size=(1,) + shape).astype(np.float32)
    return Volume(array, spacing, origin, direction, ["x"])


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_geometry_round_trip(scene, geometry, tmp_path):
    from xaiexplain.core.volume import read_volume

    volume = engine_volume(geometry)
    node = volumenodes.addVolumeNode(scene, volume.array[0], "in", volume=volume)
    # what Slicer shows: the engine's index-to-RAS matrix, exactly
    assert np.allclose(volumenodes.ijkToRas(node), volume.ijk_to_ras(), atol=1e-9)
    assert node.GetImageData().GetDimensions() == volume.shape
    # one voxel, located both ways: the value at index (3, 5, 7) sits at the same RAS point
    ijk = np.array([3, 5, 7, 1.0])
    image = node.GetImageData()
    assert image.GetScalarComponentAsDouble(3, 5, 7, 0) == pytest.approx(float(volume.array[0, 3, 5, 7]))
    assert np.allclose(volumenodes.ijkToRas(node) @ ijk, volume.ijk_to_ras() @ ijk)
    # back to the engine
    back = volumenodes.volumeFromNode(node)
    assert back.same_grid(volume, tol=1e-9) and np.array_equal(back.array, volume.array)
    # through a file written by Slicer's own storage node, read by SimpleITK (the engine's reader)
    path = writeVolumeFile(node, tmp_path / "in.nrrd")
    read = read_volume(path)
    assert read.same_grid(volume, tol=1e-6) and np.allclose(read.array, volume.array)
    # and a result read back by Slicer lands on the input's grid
    again = readVolumeFile(scene, path, "again")
    assert volumenodes.sameGrid(again, node, tolerance=1e-6)
    assert np.array_equal(volumenodes.arrayFromNode(again), volume.array)


def test_arrays_from_nodes_are_copies(scene):
    volume = engine_volume("oblique")
    node = volumenodes.addVolumeNode(scene, volume.array[0], "in", volume=volume)
    array = volumenodes.arrayFromNode(node)
    array[:] = 0
    assert volumenodes.arrayFromNode(node).std() > 0.5  # the node's voxels are untouched


# -- overlays, rendered -------------------------------------------------------------------------------

SHAPE = (48, 40, 32)


def background_and_map(scene, geometry="oblique", signed=False):
    """A smooth grey background and a map with a ball (value 1; -1 ball too if signed) off-centre."""
    from xaiexplain.core.volume import Volume

    spacing, origin, direction = GEOMETRIES[geometry]
    i, j, k = np.indices(SHAPE, dtype=np.float32)
    background = 100 + 2 * i + j - k
    volume = Volume(background[None], spacing, origin, direction)
    input_node = volumenodes.addVolumeNode(scene, background, "input", volume=volume)
    input_node.CreateDefaultDisplayNodes()
    ijk_to_ras = volumenodes.ijkToRas(input_node)

    def ball(center_ijk, radius_mm):
        ras = np.einsum("ab,bijk->aijk", ijk_to_ras[:3, :3], np.stack([i, j, k])) + ijk_to_ras[:3, 3, None, None, None]
        center = (ijk_to_ras @ np.append(center_ijk, 1.0))[:3]
        return np.linalg.norm(ras - center[:, None, None, None], axis=0), center

    distance_pos, center_pos = ball((30, 14, 16), 9.0)
    values = (distance_pos <= 9.0).astype(np.float32)
    centers = {"positive": (center_pos, distance_pos)}
    if signed:
        distance_neg, center_neg = ball((14, 26, 16), 9.0)
        values -= (distance_neg <= 9.0).astype(np.float32)
        values += np.float32(0.05) * np.sin(i)  # small values everywhere: under the threshold, never drawn
        centers["negative"] = (center_neg, distance_neg)
    result = volumenodes.addVolumeNode(scene, values, "map", reference=input_node)
    display.markResult(result, method="test", signed=signed, inputNode=input_node)
    return input_node, result, centers


def chroma(pixels):
    pixels = pixels.astype(int)
    return pixels.max(-1) - pixels.min(-1)


def pixel_ras(harness, shape):
    """RAS of every pixel of the slice view image (row 0 at the top)."""
    h, w = shape[:2]
    rows, cols = np.mgrid[0:h, 0:w]
    xy = np.stack([cols.ravel(), (h - 1 - rows).ravel(), np.zeros(h * w), np.ones(h * w)])
    xy_to_ras = volumenodes.matrixToArray(harness.sliceNode.GetXYToRAS())
    return (xy_to_ras @ xy)[:3].T.reshape(h, w, 3)


def distances_in_view(harness, pixels, center):
    return np.linalg.norm(pixel_ras(harness, pixels.shape) - center, axis=-1)


def test_unsigned_overlay_in_the_red_slice_view(harness, scene, tmp_path):
    input_node, result, centers = background_and_map(scene)
    display.showResult(scene, result, thresholdValue=0.5, opacity=0.7, legend=False)
    composite = harness.sliceLogic.GetSliceCompositeNode()
    assert composite.GetForegroundVolumeID() == result.GetID()
    assert composite.GetBackgroundVolumeID() == input_node.GetID()
    assert result.GetDisplayNode().GetColorNode().GetName() == colormaps.INFERNO_NAME

    center, _ = centers["positive"]
    harness.fitSlice()
    harness.sliceNode.JumpSliceByOffsetting(*center)
    pixels = harness.renderSlice(tmp_path / "red.png")
    distance = distances_in_view(harness, pixels, center)
    inside, outside = distance < 9.0 - 3.0, distance > 9.0 + 3.0
    assert inside.sum() > 100 and outside.sum() > 1000
    # inside the ball: Inferno's top (yellow) over grey; outside: the grey background, untouched
    warm = pixels[inside].astype(int)
    assert (warm[:, 0] - warm[:, 2] > 40).mean() > 0.99, warm.mean(0)
    assert (chroma(pixels[outside]) <= 3).mean() > 0.999
    assert pixels[outside].mean() > 20  # the background is there, not a black screen

    # the colour legend: a bar at the right edge, Inferno from dark (bottom) to yellow (top), titled
    legend = display.addLegend(result)
    assert legend.GetTitleText() == "test" and legend.GetLabelFormat() == "%.3g"
    with_legend = harness.renderSlice(tmp_path / "legend.png").astype(int)
    drawn = np.abs(with_legend - pixels.astype(int)).max(-1) > 30
    rows, cols = np.nonzero(drawn)
    assert len(rows) > 200 and cols.min() > 0.6 * pixels.shape[1]
    bar = with_legend[rows, cols]
    yellow = (bar[:, 0] > 200) & (bar[:, 1] > 200) & (bar[:, 2] < 190)
    dark = bar.max(-1) < 60
    assert yellow.any() and dark.any() and rows[yellow].mean() < rows[dark].mean()  # yellow above dark
    legend.SetVisibility(0)

    # raising the threshold above the map's maximum removes the overlay
    display.setThreshold(scene, result, 1.5)
    pixels = harness.renderSlice()
    assert (chroma(pixels[inside]) <= 3).mean() > 0.999

    # opacity 0 shows the background only, opacity 1 shows pure Inferno yellow
    display.setThreshold(scene, result, 0.5)
    display.setOpacity(scene, result, 1.0)
    top = colormaps.infernoRgb()[-1] * 255
    pixels = harness.renderSlice()
    assert np.abs(np.median(pixels[inside].astype(float), axis=0) - top).max() < 6


def test_signed_overlay_is_blue_and_red_with_a_transparent_centre(harness, scene, tmp_path):
    input_node, result, centers = background_and_map(scene, signed=True)
    display.showResult(scene, result, thresholdValue=0.3, opacity=0.8, legend=False)
    colours = result.GetDisplayNode().GetColorNode()
    assert colours.GetName() == "map colours" and colours.GetAttribute("XAIExplain.transparentFraction")
    lo, hi = result.GetDisplayNode().GetWindowLevelMin(), result.GetDisplayNode().GetWindowLevelMax()
    assert lo == pytest.approx(-hi)  # symmetric: zero is the white/transparent middle

    harness.fitSlice()
    (pos, _), (neg, _) = centers["positive"], centers["negative"]
    harness.sliceNode.JumpSliceByOffsetting(*pos)  # both balls are centred on the same axial plane
    pixels = harness.renderSlice(tmp_path / "signed.png").astype(int)
    d_pos, d_neg = distances_in_view(harness, pixels, pos), distances_in_view(harness, pixels, neg)
    red, blue = pixels[d_pos < 6], pixels[d_neg < 6]
    elsewhere = (d_pos > 12) & (d_neg > 12)
    assert (red[:, 0] - red[:, 2] > 60).mean() > 0.99
    assert (blue[:, 2] - blue[:, 0] > 40).mean() > 0.99
    # the +-0.05 ripple is under the threshold: transparent, the grey background shows
    assert (chroma(pixels[elsewhere]) <= 3).mean() > 0.999


def test_volume_rendering_in_the_3d_view(harness, scene, tmp_path):
    input_node, result, centers = background_and_map(scene)
    display.showResult(scene, result, thresholdValue=0.5, show3D=True, vrLogic=harness.vrLogic, legend=False)
    vr = display.volumeRenderingDisplayNode(result)
    assert vr is not None and vr.GetVisibility() == 1
    assert vr.IsA("vtkMRMLCPURayCastVolumeRenderingDisplayNode")
    opacity = vr.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    assert opacity.GetValue(0.49) == pytest.approx(0.0) and opacity.GetValue(1.0) > 0.5  # ramp from the threshold

    center, distance = centers["positive"]
    harness.lookFrom("anterior", center=center)
    shown = harness.render3D(tmp_path / "3d.png", parallelScale=60).astype(int)
    vr.SetVisibility(0)
    hidden = harness.render3D(parallelScale=60).astype(int)
    vr.SetVisibility(1)

    changed = np.abs(shown - hidden).max(-1) > 10
    row, col = harness.worldToViewPixel(center)
    assert changed[row, col]
    r, g, b = shown[row, col]
    assert r > b + 60, (r, g, b)  # Inferno's warm end
    # nothing drawn outside the ball's silhouette (radius 9 mm; the 3D pixel size is 120 mm / 320 px)
    rows, cols = np.nonzero(changed)
    pixel_mm = 120.0 / shown.shape[0]
    radius_px = np.hypot(rows - row, cols - col) * pixel_mm
    assert radius_px.max() < 9.0 + 2.0
    assert changed.sum() > 0.6 * np.pi * (9.0 / pixel_mm) ** 2

    # hiding it again from the module's side
    display.showVolumeRendering(harness.vrLogic, result, False)
    assert vr.GetVisibility() == 0


# -- regions ----------------------------------------------------------------------------------------

ROWS = [{"id": 7, "name": "Left Hippocampus", "volume_ml": 4.25, "score": 0.31, "rank": 1},
        {"id": 3, "name": "Right Putamen", "volume_ml": 5.5, "score": 0.05, "rank": 2},
        {"id": 12, "name": "Brain-Stem", "volume_ml": 20.0, "score": -0.01, "rank": 3}]


def region_labels():
    labels = np.zeros(SHAPE, np.int16)
    labels[30:40, 5:15, 8:14] = 7
    labels[5:12, 20:30, 20:28] = 3
    labels[20:24, 30:38, 2:6] = 12
    return labels


def test_region_table_label_map_and_centering(harness, scene):
    input_node, result, _ = background_and_map(scene, geometry="anisotropic")
    table = regions.addRegionTable(scene, list(reversed(ROWS)), "regions")
    t = table.GetTable()
    assert [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())] == list(regions.REGION_COLUMNS)
    assert [t.GetValue(r, 1).ToString() for r in range(3)] == ["Left Hippocampus", "Right Putamen", "Brain-Stem"]
    assert table.GetColumnUnitLabel("volume") == "ml"
    assert regions.regionRowsFromTable(table) == regions.asRows(ROWS)

    labels = regions.addRegionLabelMap(scene, region_labels(), {r["id"]: r["name"] for r in ROWS}, input_node)
    assert labels.IsA("vtkMRMLLabelMapVolumeNode") and volumenodes.sameGrid(labels, input_node)
    colours = labels.GetDisplayNode().GetColorNode()
    assert colours.GetColorName(7) == "Left Hippocampus" and colours.GetColorName(12) == "Brain-Stem"
    rgba = [0.0] * 4
    colours.GetColor(0, rgba)
    assert rgba[3] == 0.0  # background transparent
    regions.linkRegions(result, table, labels)
    assert result.GetNodeReference(regions.REGIONS_REFERENCE) is table

    center = regions.centerViewsOnRegion(scene, labels, 7)
    expected = (volumenodes.ijkToRas(input_node) @ np.array([34.5, 9.5, 10.5, 1.0]))[:3]
    assert np.allclose(center, expected)
    slice_center = np.array(harness.sliceNode.GetSliceToRAS().MultiplyPoint((0, 0, 0, 1))[:3])
    assert np.allclose(slice_center, expected, atol=1e-6)
    assert regions.regionCenter(labels, 99) is None


def test_region_csv(tmp_path):
    path = tmp_path / "regions.csv"
    path.write_text("id,name,volume_ml,score,rank\n3,Right Putamen,5.5,0.05,2\n7,\"Left Hippocampus\",4.25,0.31,1\n")
    from xaiexplain.io.outputs import read_region_table

    rows = regions.asRows(read_region_table(path))
    assert [r.name for r in rows] == ["Left Hippocampus", "Right Putamen"] and rows[0].volume_ml == 4.25


# -- saved and reloaded -----------------------------------------------------------------------------

def test_scene_with_results_saves_to_mrb_and_reloads(harness, scene, tmp_path):
    input_node, result, _ = background_and_map(scene, signed=True)
    display.showResult(scene, result, thresholdValue=0.3, show3D=True, vrLogic=harness.vrLogic, legend=False)
    table = regions.addRegionTable(scene, ROWS, "regions")
    labels = regions.addRegionLabelMap(scene, region_labels(), {r["id"]: r["name"] for r in ROWS}, input_node)
    regions.linkRegions(result, table, labels)
    expected = {
        "map": volumenodes.arrayFromNode(result), "labels": volumenodes.arrayFromNode(labels),
        "ijkToRas": volumenodes.ijkToRas(result), "window": result.GetDisplayNode().GetWindowLevelMax(),
        "colours": [result.GetDisplayNode().GetColorNode().GetLookupTable().GetTableValue(e)
                    for e in (0, 100, 128, 200, 255)],
        "opacity": [display.volumeRenderingDisplayNode(result).GetVolumePropertyNode().GetVolumeProperty()
                    .GetScalarOpacity().GetValue(v) for v in (-1.0, -0.2, 0.0, 0.2, 1.0)],
        "ids": {n.GetID() for n in (input_node, result, table, labels)},
    }
    path = tmp_path / "scene.mrb"
    harness.saveMRB(path)
    harness.loadMRB(path)  # the scene is cleared, then the bundle read back into it

    again = scene.GetFirstNodeByName("map")
    assert again is not None and display.isResult(again) and display.isSigned(again)
    assert display.threshold(again) == pytest.approx(0.3)
    assert again.GetNodeReference(display.INPUT_REFERENCE).GetName() == "input"
    assert np.array_equal(volumenodes.arrayFromNode(again), expected["map"])
    assert np.allclose(volumenodes.ijkToRas(again), expected["ijkToRas"], atol=1e-6)
    colours = again.GetDisplayNode().GetColorNode()
    assert colours.GetName() == "map colours"
    got = [colours.GetLookupTable().GetTableValue(e) for e in (0, 100, 128, 200, 255)]
    assert np.allclose(got, expected["colours"], atol=2e-3)  # transparent centre and ramps survive
    assert again.GetDisplayNode().GetWindowLevelMax() == pytest.approx(expected["window"])
    vr = display.volumeRenderingDisplayNode(again)
    assert vr is not None and vr.GetVisibility() == 1
    opacity = vr.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    assert np.allclose([opacity.GetValue(v) for v in (-1.0, -0.2, 0.0, 0.2, 1.0)], expected["opacity"])
    table_again = again.GetNodeReference(regions.REGIONS_REFERENCE)
    assert regions.regionRowsFromTable(table_again) == regions.asRows(ROWS)
    labels_again = table_again.GetNodeReference(regions.LABELS_REFERENCE)
    assert labels_again.IsA("vtkMRMLLabelMapVolumeNode")
    assert labels_again.GetDisplayNode().GetColorNode().GetColorName(7) == "Left Hippocampus"
    assert np.array_equal(volumenodes.arrayFromNode(labels_again), expected["labels"])
