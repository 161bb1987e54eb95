"""Physical space is the truth: preprocessing into model space and the inverse back onto the input grid."""
from __future__ import annotations

import numpy as np
import torch
from conftest import pearson
from scipy.spatial.transform import Rotation

from xaiexplain import PreprocessSpec, Preprocessor, Volume, explain
from xaiexplain.core.volume import LPS_TO_RAS, resample_to

OBLIQUE = Rotation.from_euler("xyz", [17, -11, 24], degrees=True).as_matrix()


def blob_volume(shape, spacing, direction, center_lps, origin=None, sigma_mm=6.0) -> Volume:
    """A Gaussian blob centred at a physical (LPS) point, on the given grid (centred on the point by default)."""
    spacing, direction = np.asarray(spacing, float), np.asarray(direction, float)
    if origin is None:
        origin = np.asarray(center_lps) - direction @ (spacing * (np.array(shape) - 1) / 2 + np.array([7, -5, 3]))
    vol = Volume(np.zeros((1,) + tuple(shape), np.float32), spacing, origin, direction)
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    lps = (vol.ijk_to_lps() @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]
    d2 = ((lps - np.asarray(center_lps)[:, None]) ** 2).sum(0)
    vol.array[0] = np.exp(-d2 / (2 * sigma_mm**2)).reshape(shape).astype(np.float32) * 100
    return vol


def test_no_metadata_means_the_array_exactly_as_stored():
    vol = blob_volume((20, 17, 9), (0.7, 1.3, 3.0), OBLIQUE, [10, -20, 5])
    pre = Preprocessor(PreprocessSpec())
    x = pre.forward(vol)
    assert torch.equal(x, torch.as_tensor(vol.array))
    assert np.array_equal(pre.inverse(x * 2), vol.array * 2)


def test_reorientation_of_an_lps_volume_is_the_exact_axis_flip():
    vol = blob_volume((12, 10, 8), (1.0, 2.0, 3.0), np.eye(3), [0, 0, 0])  # LPS-stored: i->L, j->P
    vol.array[0] += np.arange(vol.array[0].size, dtype=np.float32).reshape(vol.shape)  # every voxel distinct
    pre = Preprocessor(PreprocessSpec(orientation="RAS"))
    x = pre.forward(vol).numpy()
    assert np.array_equal(x[0], vol.array[0][::-1, ::-1, :])
    assert np.array_equal(pre.inverse(x), vol.array)


def test_oblique_anisotropic_volume_lands_at_the_right_physical_place_and_comes_back():
    center = np.array([12.0, -31.0, 18.0])  # LPS mm
    vol = blob_volume((40, 28, 14), (1.1, 1.6, 3.5), OBLIQUE @ np.diag([1, -1, 1]), center)
    pre = Preprocessor(PreprocessSpec(orientation="RAS", spacing=[2.0, 2.0, 2.0], spatial_size=[48, 48, 48]))
    x = pre.forward(vol)
    assert tuple(x.shape) == (1, 48, 48, 48)
    peak = np.unravel_index(int(x[0].argmax()), x.shape[1:])
    ras = pre.model_affine() @ np.array([*peak, 1.0])
    assert np.linalg.norm(ras[:3] - LPS_TO_RAS @ center) <= 2.0 * np.sqrt(3)  # within one model voxel

    back = pre.inverse(x)
    assert back.shape == vol.array.shape
    assert pearson(back, vol.array) > 0.99
    assert np.unravel_index(int(back.argmax()), vol.shape) == np.unravel_index(int(vol.array.argmax()), vol.shape)


def test_masks_move_with_nearest_neighbour():
    vol = blob_volume((30, 30, 12), (1.0, 1.0, 2.5), OBLIQUE, [0, 0, 0])
    mask = vol.with_array((vol.array > 50).astype(np.float32))
    pre = Preprocessor(PreprocessSpec(orientation="RAS", spacing=[1.5, 1.5, 1.5], spatial_size=[40, 40, 40]))
    pre.forward(vol)
    m = pre.forward_mask(mask).numpy()
    assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0


def test_explained_map_is_the_same_anatomy_on_an_oblique_lps_grid(demo, positive_case):
    """Resample a case onto an oblique, anisotropic, LPS-stored grid; the Grad-CAM map computed there
    must be the map computed on the native grid, moved by the same known transform."""
    native = positive_case.volume
    center = native.ijk_to_lps() @ np.array([*(np.array(native.shape) - 1) / 2, 1.0])
    oblique_dir = Rotation.from_euler("zyx", [12, -8, 6], degrees=True).as_matrix()  # stays near axial
    shape, spacing = (80, 72, 50), np.array([2.4, 2.7, 3.6])
    origin = center[:3] - oblique_dir @ (spacing * (np.array(shape) - 1) / 2)
    grid = Volume(np.zeros((1,) + shape, np.float32), spacing, origin, oblique_dir)
    moved = resample_to(native, grid)

    ref = explain(demo, native, "gradcam")[0]
    got = explain(demo, moved, "gradcam")[0]
    assert got.map.same_grid(moved) and got.array.shape == shape
    expected = resample_to(ref.map, grid).array[0]
    inside = resample_to(native.with_array(np.ones((1,) + native.shape, np.float32)), grid).array[0] > 0.99
    assert pearson(got.array[inside], expected[inside]) > 0.9
    assert got.prediction["predicted_class"] == ref.prediction["predicted_class"]
