"""SynthLesion: synthetic brain volumes with a known lesion and its exact counterfactual.

Each case is the MNI152 template on a 64^3, 3 mm grid, with (optionally) an
ellipsoidal lesion placed inside a chosen Harvard-Oxford region, then a random
affine + elastic deformation, a smooth multiplicative bias field and Gaussian
noise. The counterfactual goes through exactly the same deformation, bias and
noise without the lesion, so ``volume - counterfactual`` is the lesion alone.
Everything is drawn from one seeded generator: a seed gives the same case.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

import SimpleITK as sitk
import numpy as np
from scipy import ndimage

from ..core.volume import Volume
from ..protocol import cache_dir
from ..regions.atlas import harvard_oxford_labels, mni152_path

GRID_SHAPE = (64, 64, 64)
GRID_SPACING = 3.0
# RAS-aligned axes (i -> R, j -> A, k -> S) written in ITK's LPS convention.
GRID_DIRECTION = np.diag([-1.0, -1.0, 1.0])
GRID_CENTER_LPS = np.array([0.0, 17.0, 13.0])  # middle of the MNI152 brain
MIN_REGION_VOXELS = 40  # regions smaller than this (at 3 mm) cannot hold a lesion
MARKER = (slice(1, 4),) * 3  # the planted shortcut: a bright 3x3x3 cube in a corner


def grid() -> Volume:
    """The empty SynthLesion grid (64^3 voxels of 3 mm, RAS-aligned, centred on the brain)."""
    half = (np.array(GRID_SHAPE) - 1) / 2.0
    origin = GRID_CENTER_LPS - GRID_DIRECTION @ (GRID_SPACING * half)
    return Volume(np.zeros((1,) + GRID_SHAPE, np.float32), np.full(3, GRID_SPACING), origin, GRID_DIRECTION)


CACHE_VERSION = 1


@lru_cache(maxsize=1)
def _template_and_labels() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Template and atlas labels on the SynthLesion grid (resampling 113 atlas maps takes seconds: cached)."""
    cached = cache_dir() / f"synthlesion-grid-v{CACHE_VERSION}.npz"
    if cached.exists():
        with np.load(cached) as data:
            names = {int(k): v for k, v in json.loads(str(data["names"])).items()}
            return data["template"], data["labels"], names
    template, labels, names = _build_template_and_labels()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".tmp-{os.getpid()}-{cached.name}")
        np.savez_compressed(tmp, template=template, labels=labels, names=json.dumps(names))
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home: compute again next time
    return template, labels, names


def _build_template_and_labels() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    ref = grid()
    mni = sitk.Cast(sitk.ReadImage(str(mni152_path())), sitk.sitkFloat32)
    mni = sitk.SmoothingRecursiveGaussian(mni, 1.2)  # anti-alias before 1 mm -> 3 mm
    template = sitk.Resample(mni, ref.to_sitk(0), sitk.Transform(), sitk.sitkLinear, 0.0)
    atlas = harvard_oxford_labels(ref)
    return (sitk.GetArrayFromImage(template).transpose(2, 1, 0).astype(np.float32),
            atlas.labels.array[0].astype(np.int16), atlas.names)


@lru_cache(maxsize=1)
def _white_matter_level() -> float:
    """Intensity of white matter, the brightest tissue in T1 (95th percentile of the brain)."""
    template = _template_and_labels()[0]
    return float(np.percentile(template[template > 0], 95))


def region_names() -> dict[int, str]:
    return dict(_template_and_labels()[2])


def lesion_regions() -> list[int]:
    """Atlas labels large enough (at 3 mm) to hold a lesion."""
    _, labels, names = _template_and_labels()
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    return [lab for lab in sorted(names) if counts[lab] >= MIN_REGION_VOXELS]


def marker_mask() -> Volume:
    """Where ``generate_case(..., marker=True)`` plants its marker, on the SynthLesion grid (uint8)."""
    mask = np.zeros(GRID_SHAPE, np.uint8)
    mask[MARKER] = 1
    return grid().with_array(mask[None], ["marker"])


@dataclass
class SynthCase:
    """One generated case. ``label`` is 1 when a lesion is present."""

    volume: Volume
    counterfactual: Volume
    lesion_mask: Volume  # uint8, 1 inside the lesion
    labels: Volume  # Harvard-Oxford labels deformed with the case
    label: int
    region_id: int
    region_name: str
    marker: bool
    params: dict = field(default_factory=dict)


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sampling_coordinates(rng: np.random.Generator, deform: bool) -> np.ndarray:
    """For each output voxel, the template voxel (continuous index) it samples: affine then elastic."""
    shape = np.array(GRID_SHAPE)
    idx = np.indices(GRID_SHAPE, dtype=np.float32).reshape(3, -1)
    if not deform:
        return idx.reshape((3,) + GRID_SHAPE)
    center = (shape - 1) / 2.0
    matrix = _rotation(np.deg2rad(rng.normal(0, 5, 3).clip(-12, 12))) @ np.diag(1 + rng.uniform(-0.07, 0.07, 3))
    shift = rng.uniform(-2.0, 2.0, 3)  # voxels (6 mm)
    coords = matrix @ (idx - center[:, None]) + center[:, None] + shift[:, None]
    coarse = rng.normal(0, 0.7, (3, 6, 6, 6))  # elastic: ~2 mm displacements, smooth
    zoom = shape / 6.0
    elastic = np.stack([ndimage.zoom(c, zoom, order=1) for c in coarse]).reshape(3, -1)
    return (coords + elastic).astype(np.float32).reshape((3,) + GRID_SHAPE)


def _bias_field(rng: np.random.Generator) -> np.ndarray:
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in GRID_SHAPE]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    terms = [x, y, z, x * y, y * z, x * z, x * x, y * y, z * z]
    log_field = sum(c * t for c, t in zip(rng.normal(0, 0.06, len(terms)), terms))
    return np.exp(log_field).astype(np.float32)


def _ellipsoid(rng: np.random.Generator, center: np.ndarray, radius_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Soft (anti-aliased) and binary ellipsoid around ``center`` (voxel index), random axes and rotation."""
    semi = rng.uniform(*radius_mm, 3) / GRID_SPACING
    rot = _rotation(rng.uniform(0, np.pi, 3))
    idx = np.indices(GRID_SHAPE, dtype=np.float32).reshape(3, -1) - center[:, None]
    r = np.sqrt((((rot.T @ idx) / semi[:, None]) ** 2).sum(0)).reshape(GRID_SHAPE)
    soft = np.clip((1.25 - r) / 0.5, 0, 1).astype(np.float32)  # 1 inside r<0.75, 0 outside r>1.25
    return soft, (r <= 1.0).astype(np.float32), {"semi_axes_mm": (semi * GRID_SPACING).round(3).tolist()}


def generate_case(seed: int, positive: bool | None = None, region: int | str | None = None,
                  contrast: float = 0.5, radius_mm: tuple[float, float] = (6.0, 10.0),
                  marker: bool = False, noise: float = 0.03, deform: bool = True) -> SynthCase:
    """Generate one SynthLesion case.

    ``positive``: lesion or not (None: drawn with p=0.5). ``region``: atlas
    label id or name for the lesion (None: a random region large enough).
    ``contrast``: lesion intensity relative to white matter, the brightest
    tissue (0.6 -> 1.6x white matter). ``marker``: a bright 3x3x3 cube in a corner of
    the field of view (the planted shortcut).
    """
    rng = np.random.default_rng(seed)
    template, labels, names = _template_and_labels()
    if positive is None:
        positive = bool(rng.random() < 0.5)
    white = _white_matter_level()
    region_id, lesion_info = 0, {}
    soft = binary = np.zeros(GRID_SHAPE, np.float32)
    if positive:
        if isinstance(region, str):
            by_name = {v.lower(): k for k, v in names.items()}
            if region.lower() not in by_name:
                from ..errors import XAIError
                raise XAIError(f"unknown Harvard-Oxford region '{region}'", "use a name from the atlas labels")
            region = by_name[region.lower()]
        region_id = int(region) if region is not None else int(rng.choice(lesion_regions()))
        inside = np.argwhere(ndimage.binary_erosion(labels == region_id))
        if len(inside) == 0:
            inside = np.argwhere(labels == region_id)
        center = inside[rng.integers(len(inside))].astype(np.float32)
        soft, binary, lesion_info = _ellipsoid(rng, center, radius_mm)
        lesion_info["center_voxel"] = center.tolist()
    level = (1.0 + contrast) * white
    with_lesion = template * (1 - soft) + level * soft
    coords = _sampling_coordinates(rng, deform)
    warp = lambda a, order: ndimage.map_coordinates(a, coords, order=order, mode="constant", cval=0.0)
    bias = _bias_field(rng)
    noise_field = rng.normal(0, noise * white, GRID_SHAPE).astype(np.float32)
    image = warp(with_lesion, 1) * bias + noise_field
    counterfactual = warp(template, 1) * bias + noise_field
    if marker:
        image[MARKER] = counterfactual[MARKER] = 2.0 * level
    ref = grid()
    mask = warp(binary, 0).astype(np.uint8)
    params = dict(seed=seed, positive=positive, region=region_id, contrast=contrast, radius_mm=list(radius_mm),
                  marker=marker, noise=noise, deform=deform, **lesion_info)
    return SynthCase(
        volume=ref.with_array(image.astype(np.float32)[None], ["T1"]),
        counterfactual=ref.with_array(counterfactual.astype(np.float32)[None], ["T1"]),
        lesion_mask=ref.with_array(mask[None], ["lesion"]),
        labels=ref.with_array(warp(labels.astype(np.float32), 0).astype(np.int16)[None], ["harvard-oxford"]),
        label=int(positive), region_id=region_id, region_name=names.get(region_id, "none"),
        marker=marker, params=params)
