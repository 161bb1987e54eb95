"""Volumes with physical geometry, read and written through SimpleITK.

Geometry follows ITK/DICOM conventions: ``origin`` and ``direction`` are in LPS
physical space, ``direction`` columns are the i, j, k axis directions. Arrays
are stored channel-first in index order ``(C, I, J, K)`` (the order MONAI and
nibabel use), not SimpleITK's ``(K, J, I)``.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import SimpleITK as sitk
import numpy as np

from ..errors import XAIError

# Physical LPS -> RAS is a sign flip of x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A (multi-channel) 3D image on a physical grid."""

    array: np.ndarray  # (C, I, J, K)
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    channel_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim == 3:
            self.array = self.array[None]
        if self.array.ndim != 4:
            raise XAIError(f"a volume array must be 3D or channel-first 4D, got shape {self.array.shape}",
                           "pass an (I, J, K) or (C, I, J, K) array")
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not self.channel_names:
            self.channel_names = [f"channel{i}" for i in range(self.array.shape[0])]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0])

    def with_array(self, array: np.ndarray, channel_names: list[str] | None = None) -> "Volume":
        """The same grid holding another array (a map, a mask)."""
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[None]
        if tuple(array.shape[1:]) != self.shape:
            raise XAIError(f"array of shape {array.shape[1:]} does not fit grid {self.shape}",
                           "resample it onto the volume first")
        return replace(self, array=array, channel_names=channel_names or [f"channel{i}" for i in range(len(array))])

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping continuous index (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 index-to-RAS affine (the NIfTI / MONAI / Slicer convention)."""
        m = self.ijk_to_lps()
        m[:3] = LPS_TO_RAS @ m[:3]
        return m

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (self.shape == other.shape and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=tol * 10)
                and np.allclose(self.direction, other.direction, atol=tol))

    def to_sitk(self, channel: int = 0) -> sitk.Image:
        arr = self.array[channel]
        if arr.dtype == bool or arr.dtype == np.float16:  # types SimpleITK has no pixel type for
            arr = arr.astype(np.uint8 if arr.dtype == bool else np.float32)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        img.SetSpacing(self.spacing.tolist())
        img.SetOrigin(self.origin.tolist())
        img.SetDirection(self.direction.flatten().tolist())
        return img

    @classmethod
    def from_sitk(cls, image: sitk.Image, name: str = "channel0") -> "Volume":
        if image.GetDimension() != 3:
            raise XAIError(f"the image is {image.GetDimension()}-D, XAIExplain explains 3-D volumes",
                           "give a 3-D volume (a 2-D slice or a 4-D series cannot be explained)")
        arr = sitk.GetArrayFromImage(image)
        if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels become channels
            arr = np.moveaxis(arr, -1, 0).transpose(0, 3, 2, 1)
            names = [f"{name}[{i}]" for i in range(arr.shape[0])]
        else:
            arr = arr.transpose(2, 1, 0)[None]
            names = [name]
        return cls(arr, np.array(image.GetSpacing()), np.array(image.GetOrigin()),
                   np.array(image.GetDirection()).reshape(3, 3), names)


def _sitk_reason(err: RuntimeError) -> str:
    """The last line of a SimpleITK error (its first lines are C++ file and line numbers)."""
    text = str(err).strip()
    return text.splitlines()[-1][:120] if text else "unknown reason"


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _stored_voxel_size(path: Path) -> list[float] | None:
    """pixdim[1:4] of a NIfTI-1 header as written (nibabel and ITK both replace zeros by 1 when they read)."""
    import nibabel as nib

    with nib.openers.ImageOpener(str(path)) as stream:
        raw = stream.read(108)
    for order in "<>":
        if len(raw) == 108 and np.frombuffer(raw[:4], f"{order}i4")[0] == 348:
            return [float(v) for v in np.frombuffer(raw[80:92], f"{order}f4")]
    return None  # NIfTI-2 or not a header: left to the readers


def _check_nifti(path: Path) -> None:
    """What SimpleITK's NIfTI reader hides: a file shorter than its header says (read as zeros),
    non-finite voxels (read as 0) and a zero voxel size (read as 1 mm). nibabel reads the data as stored."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise XAIError(f"volume '{path}' is truncated or corrupt ({reason})", "copy or export the file again") from None
    zooms = _stored_voxel_size(path)
    if zooms is not None and not all(np.isfinite(z) and z > 0 for z in zooms):
        raise XAIError(f"the header of '{path}' gives the voxel size {zooms} mm (pixdim)",
                       "fix the header: every voxel size must be positive")
    bad = int(np.count_nonzero(~np.isfinite(data))) if data.dtype.kind in "fc" else 0
    if bad:
        raise XAIError(f"the input volume '{path}' holds {bad} NaN or infinite voxels",
                       "fill or mask them before explaining")


UNCOMPRESSED_DICOM = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}  # transfer syntaxes


def _check_dicom_series(folder: Path, files) -> None:
    """What ITK's series reader lets through: a slice file cut short (read as it is), and a gap in the
    series (a missing slice: read as if the slices were evenly spaced). Headers only; no pixel data read."""
    positions = []
    for name in files:
        reader = _header(name)
        syntax = reader.GetMetaData("0002|0010").strip(" \0") if reader.HasMetaDataKey("0002|0010") else ""
        if syntax in UNCOMPRESSED_DICOM:
            needed, size = _pixel_data_end(Path(name)), os.path.getsize(name)
            if needed is not None and size < needed:
                raise XAIError(f"the DICOM file '{name}' is truncated ({size} bytes; its pixel data ends at byte "
                               f"{needed})", "copy or export the series again")
        positions.append(reader.GetOrigin())
    for other in sorted(set(map(str, folder.iterdir())) - set(files)):  # a file GDCM passed over: unreadable?
        with open(other, "rb") as fh:
            if fh.read(132)[128:] != b"DICM":
                continue
        try:
            _header(other)
        except RuntimeError as err:
            raise XAIError(f"the DICOM file '{other}' is truncated or corrupt ({_sitk_reason(err)})",
                           "copy or export the series again") from None
    if len(positions) < 3:
        return
    normal = np.cross(*np.array(reader.GetDirection()).reshape(3, 3).T[:2])
    gaps = np.diff(np.sort(np.asarray(positions) @ normal))
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if typical <= 0 or abs(gaps[worst] - typical) > 0.01 * typical + 1e-3:
        raise XAIError(f"the DICOM series in '{folder}' is not evenly spaced: slices {worst + 1} and {worst + 2} (of "
                       f"{len(positions)}) are {gaps[worst]:.3g} mm apart, the others {typical:.3g} mm (a missing "
                       "or repeated slice?)", "export the complete series")


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _pixel_data_end(path: Path) -> int | None:
    """Where an uncompressed DICOM file's pixel data element (7FE0,0010) says it ends; None if not found."""
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")
    if at < 0:
        return None
    explicit = data[at + 4:at + 6] in (b"OW", b"OB")  # explicit VR: 2 bytes VR, 2 reserved, 4 length
    start = at + (12 if explicit else 8)
    length = int(np.frombuffer(data[start - 4:start], "<u4")[0]) if len(data) >= start else 0
    return None if length == 0xFFFFFFFF else start + length


MAX_VOXEL_MM = 100.0  # a header with a coarser voxel than this is wrong (units, a broken converter)


def _check_header_geometry(path: Path, image: sitk.Image) -> None:
    """Refuse what no scan has: voxel sizes that are not finite and positive or over MAX_VOXEL_MM, an origin
    that is not finite, axis directions that do not span 3-D space (the physical grid would be meaningless)."""
    spacing, origin = np.array(image.GetSpacing()[:3]), np.array(image.GetOrigin()[:3])
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0) and np.all(spacing <= MAX_VOXEL_MM)):
        raise XAIError(f"the header of '{path}' gives the voxel size {spacing.round(6).tolist()} mm",
                       f"fix the header: each voxel size must be above 0 and at most {MAX_VOXEL_MM:g} mm")
    if not np.all(np.isfinite(origin)):
        raise XAIError(f"the header of '{path}' gives the origin {origin.tolist()}", "fix the header's origin")
    if image.GetDimension() >= 3:
        direction = np.array(image.GetDirection()).reshape(image.GetDimension(), -1)[:3, :3]
        if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-3:
            raise XAIError(f"the header of '{path}' gives axis directions that do not span 3-D space "
                           f"({direction.round(3).tolist()})", "fix the header's orientation (direction cosines)")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI, NRRD or MHA file, or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise XAIError(f"volume '{path}' does not exist", "check the path")
    try:
        if path.is_dir():
            if not _is_dicom_dir(path):
                raise XAIError(f"folder '{path}' holds no DICOM series",
                               "point to a DICOM series folder or a volume file")
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if len(series) > 1:
                raise XAIError(f"folder '{path}' holds {len(series)} DICOM series",
                               "put each series in its own folder")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
            _check_dicom_series(path, files)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            if path.name.lower().endswith((".nii", ".nii.gz")):
                _check_nifti(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = _sitk_reason(err)
        if "Bad direction" in str(err):  # ITK: the header's axis directions are degenerate
            raise XAIError(f"the header of '{path}' gives axis directions that do not span 3-D space (determinant 0)",
                           "fix the header's orientation (direction cosines, NRRD 'space directions')") from None
        if "Refusing to change spacing" in reason:  # ITK's words for a zero or negative voxel size in a header
            given = reason.split("to ")[-1]
            raise XAIError(f"the header of '{path}' gives a voxel size that is not positive ({given} mm: NRRD "
                           "'space directions' / 'spacings')", "fix the header: every voxel size must be positive"
                           ) from None
        raise XAIError(f"cannot read volume '{path}' ({reason})",
                       "give a NIfTI, NRRD, MHA file or a DICOM series folder") from None
    _check_header_geometry(path, image)
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and 1 in image.GetSize()[:3]):
        raise XAIError(f"'{path}' is a 2-D image {image.GetSize()}", "XAIExplain needs a 3-D volume")
    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise XAIError(f"'{path}' is a 4-D series of {size[3]} volumes",
                           "split it and pass each volume with its own --input")
        image = image[:, :, :, 0]
    stem = path.name.split(".")[0] or "volume"
    return Volume.from_sitk(image, name=stem)


def resample_to(moving: Volume, reference: Volume, interpolator=sitk.sitkLinear, default: float = 0.0) -> Volume:
    """Resample every channel of ``moving`` onto ``reference``'s grid (physical space)."""
    channels = []
    for c in range(moving.n_channels):
        out = sitk.Resample(moving.to_sitk(c), reference.to_sitk(0), sitk.Transform(), interpolator, default,
                            sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else sitk.sitkUnknown)
        channels.append(sitk.GetArrayFromImage(out).transpose(2, 1, 0))
    return replace(reference, array=np.stack(channels), channel_names=list(moving.channel_names))


def stack_channels(volumes: list[Volume]) -> tuple[Volume, list[str]]:
    """Combine volumes as channels on the first one's grid. Returns the volume and notes on resampling."""
    if not volumes:
        raise XAIError("no input volume given", "pass at least one --input")
    first, notes, arrays, names = volumes[0], [], [], []
    for i, vol in enumerate(volumes):
        if not vol.same_grid(first):
            vol = resample_to(vol, first)
            notes.append(f"input {i} ({vol.channel_names[0]}) was resampled (linear) onto the grid of input 0")
        arrays.append(vol.array.astype(np.float32, copy=False))
        names.extend(vol.channel_names)
    return replace(first, array=np.concatenate(arrays, axis=0), channel_names=names), notes


def write_volume(volume: Volume, path: str | os.PathLike, channel: int = 0, compress: bool = True) -> Path:
    """Write one channel to NRRD/NIfTI/MHA; written to a temporary name first, then moved into place."""
    path = Path(path)
    if not path.name.lower().endswith(VOLUME_SUFFIXES):
        raise XAIError(f"cannot write '{path}': not a volume file name", "end it in .nii.gz, .nrrd or .mha")
    # A detached header (.mhd, .nhdr) names its data file, which a rename would not follow: write those in place.
    detached = path.name.lower().endswith((".mhd", ".nhdr"))
    tmp = path if detached else path.with_name(".tmp-" + path.name)
    try:
        sitk.WriteImage(volume.to_sitk(channel), str(tmp), compress)
    except RuntimeError as err:
        if not detached:
            tmp.unlink(missing_ok=True)
        raise XAIError(f"cannot write volume '{path}' ({_sitk_reason(err)})",
                       "check that the folder exists and is writable") from None
    if not detached:
        os.replace(tmp, path)
    return path


def load_inputs(inputs) -> tuple[Volume, list[str]]:
    """One Volume from a Volume, a path, or a list of them (as channels on the first one's grid), and notes."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return stack_channels([item if isinstance(item, Volume) else read_volume(item) for item in items])
