"""Volume I/O: round trips keep the array in (C, I, J, K) order and the physical geometry; errors are one line."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from xaiexplain.errors import XAIError
from xaiexplain.core.volume import Volume, read_volume, stack_channels, write_volume

SHAPE = (12, 10, 8)
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (-10.5, 20.25, 7.0)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A proper rotation (det +1), angles in degrees about x, then y, then z."""
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = rotation(20, -15, 30)


def make_volume(dtype=np.float32, seed: int = 0, channels: int = 1) -> Volume:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        arr = rng.integers(-1000, 3000, size=(channels, *SHAPE)).astype(dtype)
    else:
        arr = rng.normal(size=(channels, *SHAPE)).astype(dtype)
    return Volume(arr, SPACING, ORIGIN, DIRECTION)


def assert_same_geometry(vol: Volume, atol: float):
    np.testing.assert_allclose(vol.spacing, SPACING, atol=atol)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=atol)
    np.testing.assert_allclose(vol.direction, DIRECTION, atol=atol)


def assert_one_line_xaierror(excinfo, *fragments: str):
    message = str(excinfo.value)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_rotation_helper_is_oblique_rotation():
    assert np.allclose(DIRECTION @ DIRECTION.T, np.eye(3))
    assert np.isclose(np.linalg.det(DIRECTION), 1.0)
    assert np.abs(DIRECTION - np.eye(3)).max() > 0.2  # really oblique


# ----------------------------------------------------------------------------------------------- file round trips

@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_round_trip(tmp_path, suffix, dtype):
    vol = make_volume(dtype)
    path = write_volume(vol, tmp_path / f"vol{suffix}")
    assert path.exists()
    # written atomically: no temporary file left beside it, only the volume (and a detached header's data file)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []

    back = read_volume(path)
    assert back.array.shape == (1, *SHAPE)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.channel_names == ["vol"]
    assert_same_geometry(back, 1e-5)

    # index order: array[0, i, j, k] is SimpleITK's pixel at index (i, j, k) of the written file
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == SHAPE
    for ijk in [(0, 0, 0), (11, 0, 0), (0, 9, 0), (0, 0, 7), (3, 7, 5), (11, 9, 7), (5, 2, 6)]:
        assert back.array[(0, *ijk)] == pytest.approx(image.GetPixel(ijk))
        assert vol.array[(0, *ijk)] == pytest.approx(image.GetPixel(ijk))
    # and the written file's physical frame is the volume's
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((3, 7, 5)),
                               (vol.ijk_to_lps() @ [3, 7, 5, 1])[:3], atol=1e-4)


def test_second_channel_is_written(tmp_path):
    vol = make_volume(channels=2)
    back = read_volume(write_volume(vol, tmp_path / "c1.nrrd", channel=1))
    np.testing.assert_array_equal(back.array[0], vol.array[1])
    assert not np.array_equal(back.array[0], vol.array[0])


def test_vector_pixels_become_channels_in_index_order(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(3, *SHAPE)).astype(np.float32)  # (C, I, J, K)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(3, 2, 1, 0)), isVector=True)  # (K, J, I, C)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.flatten().tolist())
    sitk.WriteImage(image, str(tmp_path / "vec.nrrd"))
    back = read_volume(tmp_path / "vec.nrrd")
    assert back.array.shape == (3, *SHAPE)
    np.testing.assert_array_equal(back.array, arr)
    assert back.array[2, 4, 1, 6] == pytest.approx(image.GetPixel((4, 1, 6))[2])
    assert back.channel_names == ["vec[0]", "vec[1]", "vec[2]"]
    assert_same_geometry(back, 1e-6)


def test_bool_mask_can_be_written(tmp_path):
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:5, 3:6, 1:4] = True
    vol = Volume(mask, SPACING, ORIGIN, DIRECTION)
    back = read_volume(write_volume(vol, tmp_path / "mask.nrrd"))
    np.testing.assert_array_equal(back.array[0] != 0, mask)
    assert int(back.array.sum()) == 27


def test_nifti_affine_is_ijk_to_ras(tmp_path):
    """An independent reader (nibabel) sees the same index-to-RAS affine, and the same array order."""
    nib = pytest.importorskip("nibabel")
    vol = make_volume()
    write_volume(vol, tmp_path / "v.nii.gz")
    img = nib.load(str(tmp_path / "v.nii.gz"))
    np.testing.assert_allclose(img.affine, vol.ijk_to_ras(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.array[0])


# --------------------------------------------------------------------------------------------------------- DICOM

def write_dicom_series(image: sitk.Image, folder, series: str = "2", prefix: str = "IM"):
    """One file per slice with the per-slice tags a scanner writes (the SimpleITK DICOM-series recipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.array(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    orientation = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))  # row (i) then column (j) direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.424242"
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{uid}.3.{series}.{k + 1}",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.{series}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{sy:.10f}\\{sx:.10f}",  # row spacing (between rows, along j) \ column spacing
            "0018|0050": f"{sz:.10f}",
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        # files named in reverse order: the reader must sort slices by position, not by name
        writer.SetFileName(str(folder / f"{prefix}{image.GetDepth() - k:04d}.dcm"))
        writer.Execute(piece)


@pytest.mark.parametrize("direction", ["axis-aligned", "oblique"])
def test_dicom_series_folder(tmp_path, direction):
    vol = make_volume(np.int16)
    if direction == "axis-aligned":
        vol.direction = np.eye(3)
    write_dicom_series(vol.to_sitk(), tmp_path / "series")
    assert len(list((tmp_path / "series").iterdir())) == SHAPE[2]

    back = read_volume(tmp_path / "series")
    assert back.array.shape == (1, *SHAPE)
    np.testing.assert_array_equal(back.array[0], vol.array[0])
    np.testing.assert_allclose(back.spacing, SPACING, atol=1e-3)
    np.testing.assert_allclose(back.origin, ORIGIN, atol=1e-3)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-3)
    # same physical position for the far corner voxel
    corner = [SHAPE[0] - 1, SHAPE[1] - 1, SHAPE[2] - 1, 1]
    np.testing.assert_allclose(back.ijk_to_lps() @ corner, vol.ijk_to_lps() @ corner, atol=1e-3)


def test_folder_with_two_dicom_series_is_refused(tmp_path):
    image = make_volume(np.int16).to_sitk()
    write_dicom_series(image, tmp_path / "both", series="2", prefix="A")
    write_dicom_series(image, tmp_path / "both", series="5", prefix="B")
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path / "both")
    assert_one_line_xaierror(excinfo, "2 DICOM series")


# ----------------------------------------------------------------------------------------------------- geometry

def test_ijk_to_ras_matches_definition():
    vol = make_volume()
    m = vol.ijk_to_ras()
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    flip = np.diag([-1.0, -1.0, 1.0])
    for ijk in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (11, 9, 7), (3.5, 2.25, 6)]:
        ijk = np.array(ijk, dtype=float)
        expected = flip @ (np.array(ORIGIN) + DIRECTION @ (np.array(SPACING) * ijk))
        np.testing.assert_allclose((m @ [*ijk, 1])[:3], expected, atol=1e-9)


def test_ijk_to_ras_of_known_axis_aligned_volume():
    vol = Volume(np.zeros(SHAPE), spacing=(2, 3, 4), origin=(10, 20, 30))
    # LPS (10 + 2i, 20 + 3j, 30 + 4k) is RAS (-10 - 2i, -20 - 3j, 30 + 4k)
    np.testing.assert_allclose(vol.ijk_to_ras() @ [1, 2, 3, 1], [-12, -26, 42, 1])
    np.testing.assert_allclose(vol.ijk_to_lps() @ [1, 2, 3, 1], [12, 26, 42, 1])


def test_ijk_to_lps_agrees_with_simpleitk():
    vol = make_volume()
    image = vol.to_sitk()
    for ijk in [(0, 0, 0), (11, 9, 7), (4, 1, 6)]:
        np.testing.assert_allclose((vol.ijk_to_lps() @ [*ijk, 1])[:3], image.TransformIndexToPhysicalPoint(ijk),
                                   atol=1e-9)


# ----------------------------------------------------------------------------------------------- stack_channels

def ramp(points: np.ndarray) -> np.ndarray:
    """A linear function of LPS position: linear interpolation reproduces it exactly."""
    return 0.5 * points[..., 0] - 1.25 * points[..., 1] + 2.0 * points[..., 2] + 7.0


def physical_points(vol: Volume) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1).astype(float)
    return ijk @ (vol.direction @ np.diag(vol.spacing)).T + vol.origin  # (I, J, K, 3)


def test_stack_same_grid_needs_no_note():
    a, b = make_volume(seed=1), make_volume(seed=2)
    a.channel_names, b.channel_names = ["t1"], ["flair"]
    stacked, notes = stack_channels([a, b])
    assert notes == []
    assert stacked.array.shape == (2, *SHAPE)
    assert stacked.channel_names == ["t1", "flair"]
    np.testing.assert_array_equal(stacked.array[0], a.array[0])
    np.testing.assert_array_equal(stacked.array[1], b.array[0])
    assert stacked.same_grid(a)


def test_stack_resamples_other_grid_onto_first():
    first = make_volume(seed=1)
    first.channel_names = ["t1"]
    # a second grid, same orientation, shifted 2 mm along every axis and finer/coarser, covering the first
    shift = DIRECTION @ np.array([-2.0, -2.0, -2.0])
    second = Volume(np.zeros((22, 16, 12), np.float32), spacing=(0.6, 0.9, 2.0),
                    origin=np.array(ORIGIN) + shift, direction=DIRECTION, channel_names=["flair"])
    second.array[0] = ramp(physical_points(second))
    assert not second.same_grid(first)

    stacked, notes = stack_channels([first, second])
    assert len(notes) == 1 and "input 1" in notes[0] and "flair" in notes[0] and "resampled" in notes[0]
    assert stacked.array.shape == (2, *SHAPE)
    assert stacked.same_grid(first)
    assert stacked.channel_names == ["t1", "flair"]
    np.testing.assert_array_equal(stacked.array[0], first.array[0])
    expected = ramp(physical_points(first))
    np.testing.assert_allclose(stacked.array[1], expected, atol=1e-3)
    # one voxel by hand: (3, 4, 5) of the first grid
    p = np.array(ORIGIN) + DIRECTION @ (np.array(SPACING) * [3, 4, 5])
    assert stacked.array[1, 3, 4, 5] == pytest.approx(0.5 * p[0] - 1.25 * p[1] + 2.0 * p[2] + 7.0, abs=1e-3)


def test_stack_resamples_shifted_origin_constant():
    first = make_volume(seed=1)
    second = Volume(np.full(SHAPE, 42.0, np.float32), SPACING, np.array(ORIGIN) + [0.3, -0.2, 0.1], DIRECTION)
    stacked, notes = stack_channels([first, second])
    assert len(notes) == 1
    # inside the overlap the constant survives; the shifted-out edge gets the default 0
    assert stacked.array[1, 5, 5, 4] == pytest.approx(42.0)
    assert np.isclose(stacked.array[1], 42.0).mean() > 0.5


def test_stack_of_nothing_is_an_error():
    with pytest.raises(XAIError) as excinfo:
        stack_channels([])
    assert_one_line_xaierror(excinfo, "no input")


# --------------------------------------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path / "nothere.nii.gz")
    assert_one_line_xaierror(excinfo, "nothere.nii.gz", "does not exist")


def test_random_bytes_named_nrrd(tmp_path):
    (tmp_path / "x.nrrd").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path / "x.nrrd")
    assert_one_line_xaierror(excinfo, "x.nrrd", "cannot read")


@pytest.mark.parametrize("name", ["slice.nrrd", "slice.png"])
def test_2d_image(tmp_path, name):
    image = sitk.GetImageFromArray(np.arange(30 * 20, dtype=np.uint8).reshape(30, 20))
    sitk.WriteImage(image, str(tmp_path / name))
    assert sitk.ReadImage(str(tmp_path / name)).GetDimension() == 2
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path / name)
    assert_one_line_xaierror(excinfo, name, "2-D")


def test_single_slice_3d_is_2d(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((1, 10, 12), np.float32))
    sitk.WriteImage(image, str(tmp_path / "one.nrrd"))
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path / "one.nrrd")
    assert_one_line_xaierror(excinfo, "2-D")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_4d_with_several_volumes(tmp_path, suffix):
    image = sitk.GetImageFromArray(np.zeros((3, 8, 10, 12), np.float32), isVector=False)  # 3 volumes of 12x10x8
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(tmp_path / f"series{suffix}"))
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path / f"series{suffix}")
    assert_one_line_xaierror(excinfo, "4-D", "3 volumes")


def test_4d_with_one_volume_is_read(tmp_path):
    arr = np.random.default_rng(0).normal(size=(1, 8, 10, 12)).astype(np.float32)  # (T, K, J, I)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(tmp_path / "one.nrrd"))
    back = read_volume(tmp_path / "one.nrrd")
    assert back.array.shape == (1, 12, 10, 8)
    np.testing.assert_array_equal(back.array[0], arr[0].transpose(2, 1, 0))


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "notdicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here\n")
    write_volume(make_volume(), folder / "vol.nrrd")
    with pytest.raises(XAIError) as excinfo:
        read_volume(folder)
    assert_one_line_xaierror(excinfo, "notdicom", "no DICOM")


def test_empty_folder(tmp_path):
    with pytest.raises(XAIError) as excinfo:
        read_volume(tmp_path)
    assert_one_line_xaierror(excinfo, "no DICOM")


def test_write_to_unknown_format_or_missing_folder(tmp_path):
    with pytest.raises(XAIError) as excinfo:
        write_volume(make_volume(), tmp_path / "map.txt")
    assert_one_line_xaierror(excinfo, "map.txt")
    with pytest.raises(XAIError) as excinfo:
        write_volume(make_volume(), tmp_path / "missing" / "map.nrrd")
    assert_one_line_xaierror(excinfo, "map.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_volume_rejects_bad_array_shape():
    with pytest.raises(XAIError) as excinfo:
        Volume(np.zeros((4, 5)))
    assert_one_line_xaierror(excinfo, "(4, 5)")


# ------------------------------------------------------------------------------------------------ no side effects

@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_and_read_leave_the_volume_unchanged(tmp_path, suffix):
    vol = make_volume(channels=2)
    vol.channel_names = ["a", "b"]
    before = (vol.array.copy(), vol.spacing.copy(), vol.origin.copy(), vol.direction.copy(), list(vol.channel_names))
    flags = vol.array.flags.writeable, vol.array.dtype, vol.array.strides
    path = write_volume(vol, tmp_path / f"v{suffix}")
    write_volume(vol, tmp_path / f"w{suffix}", channel=1)
    back = read_volume(path)
    back.array += 1  # the read volume shares nothing with the written one
    np.testing.assert_array_equal(vol.array, before[0])
    np.testing.assert_array_equal(vol.spacing, before[1])
    np.testing.assert_array_equal(vol.origin, before[2])
    np.testing.assert_array_equal(vol.direction, before[3])
    assert vol.channel_names == before[4]
    assert (vol.array.flags.writeable, vol.array.dtype, vol.array.strides) == flags
    # reading twice gives the same volume: reading does not change the file either
    np.testing.assert_array_equal(read_volume(path).array, before[0][:1])
