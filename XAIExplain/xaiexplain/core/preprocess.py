"""Into model space and back, with MONAI's invertible transforms.

A :class:`PreprocessSpec` says what the model expects (orientation, spacing,
spatial size, intensity scaling). Spatial steps run as MONAI transforms on a
``MetaTensor`` that records them, so the map computed in model space is sent
back through their exact inverses onto the input volume's own grid. An empty
spec (a model with no preprocessing metadata) passes the array exactly as
stored.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (Compose, NormalizeIntensity, Orientation, ResizeWithPadOrCrop, ScaleIntensityRange,
                              ScaleIntensityRangePercentiles, Spacing)

from ..errors import XAIError
from .volume import MAX_VOXEL_MM, Volume

INTENSITY_KINDS = ("range", "percentiles", "zscore")
# Defaults filled in so that two specs meaning the same scaling compare equal.
INTENSITY_DEFAULTS = {"range": {"b_min": 0.0, "b_max": 1.0, "clip": False},
                      "percentiles": {"lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0, "clip": False},
                      "zscore": {"nonzero": False}}


@dataclass
class PreprocessSpec:
    orientation: str | None = None  # e.g. "RAS"
    spacing: list[float] | None = None  # mm
    spatial_size: list[int] | None = None  # crop/pad to this size (centred)
    intensity: dict | None = None  # {"kind": "range"|"percentiles"|"zscore", ...}

    @classmethod
    def from_dict(cls, data: dict | None) -> "PreprocessSpec":
        data = dict(data or {})
        unknown = set(data) - {"orientation", "spacing", "spatial_size", "intensity"}
        if unknown:
            raise XAIError(f"unknown preprocessing keys {sorted(unknown)}",
                           "use orientation, spacing, spatial_size and intensity")
        spec = cls(**data)
        _check_geometry(spec)
        if spec.intensity is not None:
            kind = spec.intensity.get("kind")
            if kind not in INTENSITY_KINDS:
                raise XAIError(f"unknown intensity scaling {kind!r}", f"use one of {', '.join(INTENSITY_KINDS)}")
            if kind == "range" and not {"a_min", "a_max"} <= set(spec.intensity):
                raise XAIError("intensity scaling 'range' needs a_min and a_max", "give both")
            spec.intensity = {"kind": kind, **INTENSITY_DEFAULTS[kind],
                              **{k: v for k, v in spec.intensity.items() if k != "kind"}}
        return spec

    def merged(self, **overrides) -> "PreprocessSpec":
        """This spec with the non-None ``overrides`` (from CLI flags / keyword arguments) applied."""
        return PreprocessSpec.from_dict({**self.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def intensity_transform(intensity: dict | None):
    """The MONAI intensity transform for a spec's ``intensity`` entry (identity for None)."""
    if not intensity:
        return lambda x: x
    intensity = PreprocessSpec.from_dict({"intensity": intensity}).intensity
    kind = intensity["kind"]
    if kind == "range":
        return ScaleIntensityRange(intensity["a_min"], intensity["a_max"], intensity["b_min"], intensity["b_max"],
                                   clip=intensity["clip"])
    if kind == "percentiles":
        return ScaleIntensityRangePercentiles(intensity["lower"], intensity["upper"], intensity["b_min"],
                                              intensity["b_max"], clip=intensity["clip"], channel_wise=True)
    return NormalizeIntensity(nonzero=intensity["nonzero"], channel_wise=True)


MAX_SIZE = 4096  # voxels per axis: more would not fit in any memory as a 3-D float volume


def _check_geometry(spec: PreprocessSpec) -> None:
    """Three plausible spacings and sizes, three axis codes naming each axis once."""
    for key, value, whole, top in (("spacing", spec.spacing, False, MAX_VOXEL_MM),
                                   ("spatial_size", spec.spatial_size, True, MAX_SIZE)):
        if value is None:
            continue
        numbers = list(value) if isinstance(value, (list, tuple)) else []
        good = len(numbers) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and 0 < v <= top
            and (not whole or float(v) == int(v)) for v in numbers)
        if not good:
            kind = (f"whole numbers of voxels from 1 to {top}" if whole
                    else f"numbers of millimetres above 0 and up to {top:g}")
            raise XAIError(f"preprocessing {key} {value!r} is not three {kind}",
                           f"give three, e.g. --{'size 128 128 128' if whole else 'spacing 1.5 1.5 1.5'}")
    if spec.orientation is not None:
        code = str(spec.orientation).upper()
        axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in code]
        if len(code) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
            raise XAIError(f"preprocessing orientation {spec.orientation!r} is not three axis codes",
                           "give one of L/R, P/A and I/S each, e.g. RAS or LPS")


class Preprocessor:
    """Maps one input volume into model space and maps model-space arrays back onto its grid."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        self.spatial = self._spatial_steps("bilinear")
        self.intensity = intensity_transform(spec.intensity)
        self._applied: MetaTensor | None = None
        self._input: Volume | None = None

    def _spatial_steps(self, mode: str) -> Compose | None:
        steps = []
        if self.spec.orientation:
            steps.append(Orientation(axcodes=self.spec.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if self.spec.spacing:
            steps.append(Spacing(pixdim=self.spec.spacing, mode=mode, padding_mode="zeros"))
        if self.spec.spatial_size:
            steps.append(ResizeWithPadOrCrop(spatial_size=self.spec.spatial_size))
        return Compose(steps) if steps else None

    def _to_meta(self, volume: Volume) -> MetaTensor:
        data = torch.as_tensor(np.array(volume.array, dtype=np.float32, copy=True))
        return MetaTensor(data, affine=torch.as_tensor(volume.ijk_to_ras(), dtype=torch.float64))

    def forward(self, volume: Volume) -> torch.Tensor:
        """The model input (C, X, Y, Z) float32 for ``volume``; the volume itself is not modified."""
        self._input = volume
        data = self._to_meta(volume)
        if self.spatial is not None:
            data = self.spatial(data)
            self._applied = data
        out = self.intensity(data)
        return torch.as_tensor(out.as_tensor() if isinstance(out, MetaTensor) else out, dtype=torch.float32)

    def forward_mask(self, mask: Volume) -> torch.Tensor:
        """A mask on the input grid, moved into model space with nearest-neighbour sampling."""
        data = self._to_meta(mask)
        if self.spatial is not None:
            data = self._spatial_steps("nearest")(data)
        return torch.as_tensor(data.as_tensor(), dtype=torch.float32)

    def inverse(self, model_space: torch.Tensor | np.ndarray) -> np.ndarray:
        """Send a (C, X, Y, Z) model-space array back onto the input grid: (C, I, J, K) float32."""
        data = torch.as_tensor(model_space, dtype=torch.float32).detach().cpu()
        if self.spatial is None:
            return data.numpy()
        if self._applied is None:
            raise RuntimeError("inverse() called before forward()")
        meta = MetaTensor(data, affine=self._applied.affine,
                          meta={k: v for k, v in self._applied.meta.items() if k != "affine"})
        # MONAI's inverses consume the records they read: give them a copy, keep ours for the next map.
        meta.applied_operations = copy.deepcopy(self._applied.applied_operations)
        back = self.spatial.inverse(meta)
        return np.asarray(back.as_tensor().numpy(), dtype=np.float32)

    def model_affine(self) -> np.ndarray:
        """Index-to-RAS affine of the model-space grid (after forward)."""
        if self._applied is None:
            return self._input.ijk_to_ras()
        return np.asarray(self._applied.affine, dtype=float)
