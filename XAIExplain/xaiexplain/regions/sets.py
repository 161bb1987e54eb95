"""Anatomical regions on the input grid, and a per-region summary of any attribution map.

A :class:`Regions` is an integer label volume on the input volume's grid (0 is
background) with a name per label. Sources: the Harvard-Oxford atlas (in MNI
space, or registered into the subject, see :mod:`.registration`), a user label
volume with a names file (CSV or Slicer colour table), or 3D SLIC supervoxels
of the volume itself.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import numpy as np

from ..core.volume import Volume, read_volume, resample_to
from ..errors import XAIError

MIN_COVERAGE = 0.5  # share of a label volume's labelled voxels that must land inside the input volume


@dataclass
class Regions:
    """Integer labels on the input grid (one channel, 0 = background) and their names."""

    labels: Volume
    names: dict[int, str]
    source: str  # "harvard-oxford", "labels:<file>", "supervoxels"
    info: dict = field(default_factory=dict)  # registration quality, parameters, notes

    def ids(self) -> list[int]:
        """Labels present on the grid, background excluded, ascending."""
        return [int(v) for v in np.unique(self.labels.array[0]) if v != 0]

    def describe(self) -> dict:
        return {"source": self.source, "regions": len(self.ids()), **self.info}


def read_region_names(path) -> dict[int, str]:
    """Label -> name from a CSV (``id,name`` with or without a header) or a Slicer colour table (.txt/.ctbl)."""
    path = Path(path)
    if not path.is_file():
        raise XAIError(f"region names file '{path}' does not exist", "check the path given with --region-names")
    text = path.read_text(encoding="utf-8", errors="replace")
    names = _colour_table(text) if path.suffix.lower() in (".txt", ".ctbl") else _names_csv(text)
    if not names:
        raise XAIError(f"no 'label name' pairs found in '{path}'",
                       "give a CSV with columns id,name or a Slicer colour table (label name R G B A per line)")
    return names


def _colour_table(text: str) -> dict[int, str]:
    names = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and parts[0].lstrip("-").isdigit() and len(parts) >= 2:
            names[int(parts[0])] = parts[1]
    return names


ID_COLUMNS = ("id", "label", "index", "value", "labelvalue", "label_value")
NAME_COLUMNS = ("name", "label_name", "labelname", "region", "structure", "segment")


def _names_csv(text: str) -> dict[int, str]:
    rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
    if not rows:
        return {}
    header = [cell.strip().lower() for cell in rows[0]]
    id_col, name_col = 0, 1
    if not header[0].lstrip("-").isdigit():  # a header row: find the columns by name
        id_col = next((header.index(c) for c in ID_COLUMNS if c in header), 0)
        name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), 1)
        rows = rows[1:]
    names = {}
    for row in rows:
        if len(row) <= max(id_col, name_col) or not row[id_col].strip().lstrip("-").isdigit():
            raise XAIError(f"cannot read the region names row {','.join(row)!r}", "write each row as id,name")
        names[int(row[id_col])] = row[name_col].strip()
    return names


def label_regions(labels, names, reference: Volume) -> Regions:
    """User-supplied regions: a label volume (path or Volume) and names (path or dict), on ``reference``'s grid.

    Labels on another grid are resampled (nearest neighbour) if most of them land inside the volume.
    """
    where = str(labels) if not isinstance(labels, Volume) else "label volume"
    volume = labels if isinstance(labels, Volume) else read_volume(labels)
    array = volume.array[0]
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise XAIError(f"'{where}' holds non-integer values, not labels", "give a label map (integer voxels)")
    if array.min() < 0:
        raise XAIError(f"'{where}' holds negative labels", "give a label map with labels >= 0 (0 = background)")
    if not array.any():
        raise XAIError(f"the label volume '{where}' holds no label other than 0", "give a label map with regions")
    if names is None:
        raise XAIError(f"the regions in '{where}' have no names",
                       "give a names file with --region-names (CSV id,name or a Slicer colour table)")
    names = dict(names) if isinstance(names, dict) else read_region_names(names)
    volume = volume.with_array(array.astype(np.int32)[None], ["labels"])
    notes = []
    if not volume.same_grid(reference):
        before = np.bincount(volume.array[0].ravel())[1:].sum() * np.prod(volume.spacing)
        volume = resample_to(volume, reference, interpolator=sitk.sitkNearestNeighbor)
        after = np.count_nonzero(volume.array[0]) * np.prod(reference.spacing)
        coverage = after / before if before else 0.0
        if coverage < MIN_COVERAGE:
            raise XAIError(f"the label volume '{where}' does not lie on the input volume "
                           f"({coverage:.0%} of its labelled voxels fall inside it)",
                           "give labels in the same physical space as the input (ideally on its grid)")
        notes.append(f"the labels were resampled (nearest neighbour) onto the input grid ({coverage:.0%} kept)")
    present = [int(v) for v in np.unique(volume.array[0]) if v != 0]
    if not present:
        raise XAIError(f"the label volume '{where}' holds no label other than 0", "give a label map with regions")
    unnamed = [v for v in present if v not in names]
    if unnamed:
        shown = ", ".join(map(str, unnamed[:5])) + (" ..." if len(unnamed) > 5 else "")
        raise XAIError(f"label(s) {shown} of '{where}' have no name in the names file",
                       "add them to the names file, or check that it belongs to this label volume")
    return Regions(volume, {v: names[v] for v in present}, f"labels:{Path(where).name}", {"notes": notes})


SUPERVOXELS = 200  # regions when a region method is given none


def supervoxel_regions(volume: Volume, n_segments: int = SUPERVOXELS, compactness: float = 0.1) -> Regions:
    """3D SLIC supervoxels of the volume's foreground (all channels, each scaled to its 1-99th percentiles)."""
    from skimage.filters import threshold_otsu
    from skimage.segmentation import slic

    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments < 2:
        raise XAIError(f"{n_segments!r} supervoxels cannot be regions", "ask for a whole number of 2 or more")

    channels = []
    for channel in volume.array.astype(np.float32):
        low, high = np.percentile(channel, [1, 99])
        channels.append(np.clip((channel - low) / max(high - low, 1e-6), 0, 1))
    image = np.stack(channels, -1)
    mean = image.mean(-1)
    foreground = mean > threshold_otsu(mean) * 0.5  # half Otsu: keeps dark tissue next to the background
    labels = slic(image, n_segments=int(n_segments), compactness=float(compactness), channel_axis=-1,
                  spacing=volume.spacing, mask=foreground, start_label=1, enforce_connectivity=True)
    labels = labels.astype(np.int32)
    ids = [int(v) for v in np.unique(labels) if v != 0]
    return Regions(volume.with_array(labels[None], ["supervoxels"]), {v: f"supervoxel {v}" for v in ids},
                   "supervoxels", {"n_segments": int(n_segments), "compactness": float(compactness)})


def harvard_oxford_regions(volume: Volume, registration: str = "affine", threshold: float = 25.0) -> Regions:
    """Harvard-Oxford max-probability labels on ``volume``'s grid.

    ``registration``: "none" (the volume is in MNI space), "affine" (rigid then affine
    registration of the MNI152 template to the volume) or "deformable" (then a B-spline).
    """
    from .atlas import harvard_oxford_names

    if not 0 <= float(threshold) < 100:
        raise XAIError(f"atlas threshold {threshold!r} % is not a probability",
                       "give a percentage from 0 (every voxel the atlas reaches) to under 100 (25 is the default)")
    if registration == "none":
        from .registration import harvard_oxford_mni

        moved = sitk.Resample(harvard_oxford_mni(float(threshold)), volume.to_sitk(0), sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0)
        labels = volume.with_array(sitk.GetArrayFromImage(moved).transpose(2, 1, 0)[None])
        info = {"registration": "none (the volume is taken to be in MNI space)"}
    elif registration in ("affine", "deformable"):
        from .registration import atlas_into_subject

        labels, info = atlas_into_subject(volume, threshold, deformable=registration == "deformable")
    else:
        raise XAIError(f"unknown atlas registration '{registration}'", "use none, affine or deformable")
    labels = volume.with_array(labels.array[:1].astype(np.int32), ["harvard-oxford"])
    if not labels.array.any():
        raise XAIError("the Harvard-Oxford atlas does not overlap the volume",
                       "check the volume is a head in a known orientation, or give your own --regions")
    names = harvard_oxford_names()
    present = {int(v): names[int(v)] for v in np.unique(labels.array) if v != 0}
    return Regions(labels, present, "harvard-oxford", {"threshold_percent": float(threshold), **info})


def resolve_regions(regions, names, volume: Volume) -> Regions:
    """A :class:`Regions` on ``volume``'s grid from "harvard-oxford", "supervoxels", a label volume or a Regions."""
    if isinstance(regions, Regions):
        if regions.labels.same_grid(volume):
            return regions
        moved = label_regions(regions.labels, regions.names, volume)
        return Regions(moved.labels, moved.names, regions.source, {**regions.info, **moved.info})
    if isinstance(regions, str) and regions == "harvard-oxford":
        return harvard_oxford_regions(volume)
    if isinstance(regions, str) and regions == "supervoxels":
        return supervoxel_regions(volume)
    return label_regions(regions, names, volume)


def paint(labels: np.ndarray, scores: dict[int, float], fill: float = 0.0) -> np.ndarray:
    """A float32 map with every voxel of region ``k`` set to ``scores[k]`` (``fill`` elsewhere)."""
    top = int(labels.max()) if labels.size else 0
    table = np.full(max(top, max(scores, default=0)) + 1, fill, np.float32)
    for k, value in scores.items():
        table[int(k)] = value
    return table[labels]


def region_table(attribution: np.ndarray, regions: Regions, scores: dict[int, float] | None = None) -> list[dict]:
    """Per region: volume (ml), sum, mean, share of the positive attribution, score and rank.

    ``score`` is the method's own region score where it has one (occlusion drop, LIME
    weight, Shapley value), otherwise the region's sum of attribution (its total
    contribution for methods with completeness). Rank 1 = highest score.
    """
    labels = regions.labels.array[0].ravel()
    values = np.asarray(attribution, dtype=np.float64).ravel()
    if values.shape != labels.shape:
        raise XAIError("the map and the regions lie on different grids", "compute the map on the input volume")
    size = int(labels.max()) + 1
    count = np.bincount(labels, minlength=size)
    total = np.bincount(labels, weights=values, minlength=size)
    positive = np.bincount(labels, weights=np.clip(values, 0, None), minlength=size)
    all_positive = float(np.clip(values, 0, None).sum())
    voxel_ml = float(np.prod(regions.labels.spacing)) / 1000.0
    rows = []
    for k in regions.ids():
        score = float(total[k]) if scores is None else float(scores.get(k, np.nan))  # nan: not scored
        rows.append({"id": k, "name": regions.names.get(k, str(k)), "volume_ml": round(count[k] * voxel_ml, 4),
                     "score": score, "sum": float(total[k]), "mean": float(total[k] / count[k]),
                     "positive_share": float(positive[k] / all_positive) if all_positive > 0 else 0.0})
    rows.sort(key=lambda row: -row["score"] if np.isfinite(row["score"]) else np.inf)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows
