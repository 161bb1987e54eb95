"""Volume nodes <-> engine volumes: arrays and geometry.

Slicer keeps an image's geometry as an IJK-to-RAS matrix; the engine (like ITK
and DICOM) keeps spacing, origin and direction in LPS. The two differ by a sign
flip of the first two physical axes. Arrays: a vtkImageData's scalars are laid
out with i fastest, i.e. (K, J, I) in numpy order; the engine uses (C, I, J, K).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

# RAS <-> LPS: flip x and y (the matrix is its own inverse).
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRas(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix (its own geometry, parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrixToArray(matrix)


def geometryFromNode(node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, origin, direction) in the engine's LPS convention."""
    ijkToLps = RAS_LPS @ ijkToRas(node)
    spacing = np.array(node.GetSpacing(), dtype=float)
    direction = ijkToLps[:3, :3] / spacing[None, :]
    return spacing, ijkToLps[:3, 3].copy(), direction


def setGeometry(node, spacing, origin, direction) -> None:
    """Give ``node`` the geometry of an engine volume (LPS spacing/origin/direction)."""
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    ijkToLps[:3, 3] = np.asarray(origin, float)
    node.SetIJKToRASMatrix(arrayToMatrix(RAS_LPS @ ijkToLps))


def copyGeometry(source, target) -> None:
    """Same IJK-to-RAS and same parent transform: an overlay lands exactly on its input."""
    target.SetIJKToRASMatrix(arrayToMatrix(ijkToRas(source)))
    target.SetAndObserveTransformNodeID(source.GetTransformNodeID())


def arrayFromNode(node) -> np.ndarray:
    """Voxels as (C, I, J, K); a copy, so the node is never modified through it."""
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"volume '{node.GetName()}' has no image data: load or create its voxels first")
    dims = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    components = image.GetNumberOfScalarComponents()
    array = scalars.reshape(dims[2], dims[1], dims[0], components)  # (K, J, I, C)
    return np.ascontiguousarray(array.transpose(3, 2, 1, 0)).copy()


def updateNodeFromArray(node, array: np.ndarray) -> None:
    """Replace the node's voxels by ``array`` ((I, J, K) or (1, I, J, K)); geometry is left alone."""
    array = np.asarray(array)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"one channel expected, got {array.shape[0]}")
        array = array[0]
    if array.dtype == bool:
        array = array.astype(np.uint8)
    flat = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()  # (K, J, I): i fastest
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    vtkArray = numpy_support.numpy_to_vtk(flat, deep=True,
                                          array_type=numpy_support.get_vtk_array_type(flat.dtype))
    image.GetPointData().SetScalars(vtkArray)
    node.SetAndObserveImageData(image)
    node.Modified()


def volumeFromNode(node):
    """An engine Volume (lazy import: the engine needs the Python dependencies) holding a copy of the voxels."""
    from xaiexplain.core.volume import Volume

    spacing, origin, direction = geometryFromNode(node)
    array = arrayFromNode(node)
    names = [node.GetName()] if array.shape[0] == 1 else [f"{node.GetName()}[{c}]" for c in range(array.shape[0])]
    return Volume(array, spacing, origin, direction, names)


def addVolumeNode(scene, array: np.ndarray, name: str, *, volume=None, reference=None,
                  className: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding ``array`` on the grid of ``reference`` (a node) or ``volume`` (engine Volume)."""
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    updateNodeFromArray(node, array)
    if reference is not None:
        copyGeometry(reference, node)
    elif volume is not None:
        setGeometry(node, volume.spacing, volume.origin, volume.direction)
    return node


def sameGrid(a, b, tolerance: float = 1e-4) -> bool:
    """Whether two volume nodes share dimensions and IJK-to-RAS (within ``tolerance`` mm)."""
    ia, ib = a.GetImageData(), b.GetImageData()
    if ia is None or ib is None or ia.GetDimensions() != ib.GetDimensions():
        return False
    return bool(np.allclose(ijkToRas(a), ijkToRas(b), atol=tolerance))


def writeVolumeFile(node, path) -> Path:
    """Write a volume (or label map) node to NRRD with Slicer's storage node: the file's geometry is what
    Slicer shows. The node is not changed."""
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temporary file: speed over size
    if not storage.WriteData(node):
        raise RuntimeError(f"cannot write '{node.GetName()}' to {path}")
    return Path(path)


def readVolumeFile(scene, path, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    """A new node read from a volume file by Slicer's storage node."""
    import slicer

    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if className == "vtkMRMLLabelMapVolumeNode":
        storage.SetCenterImage(0)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"cannot read {path}")
    return node
