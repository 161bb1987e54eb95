"""The one result type every method returns, and its JSON form."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .volume import Volume


@dataclass
class Attribution:
    """An attribution map on the input volume's grid, with everything needed to reproduce it."""

    map: Volume  # one channel: the map summed over input channels
    method: str
    signed: bool
    params: dict
    target: dict
    prediction: dict
    timings: dict  # seconds and passes
    versions: dict
    seed: int
    model: dict
    channel_maps: Volume | None = None  # per input channel, for multi-channel inputs
    info: dict = field(default_factory=dict)  # method facts: layer, completeness error, ...
    notes: list[str] = field(default_factory=list)  # how the input was handled (resampled, ...)
    regions: list[dict] | None = None  # region table (regions.region_table), rank order, when regions were given
    region_labels: Volume | None = None  # the regions' integer labels on the input grid (written as regions.nrrd)
    trust: dict | None = None  # the trust card (trust.trust_card), when the checks ran
    shortcut_region: Volume | None = None  # the shortcut check's offending voxels (trust.shortcut.LABELS)

    @property
    def warnings(self) -> list[dict]:
        """What the method found wrong with its own map, e.g. a baseline the network cannot see: each
        {method, code, message, fix} (see ``core.baselines.check_baseline``). The method puts them in its
        info; the JSON form has them at the top, beside ``notes``."""
        return list(self.info.get("warnings") or [])

    @property
    def array(self) -> np.ndarray:
        """The map as (I, J, K) float32 on the input grid."""
        return self.map.array[0]

    def peak_index(self) -> tuple[int, int, int]:
        return peak_voxel(self.array)

    def to_dict(self) -> dict:
        a = self.array
        out = {
            "method": self.method, "signed": self.signed, "params": _jsonable(self.params), "target": self.target,
            "prediction": self.prediction, "timings": self.timings, "seed": self.seed, "model": self.model,
            "versions": self.versions, "info": _jsonable({k: v for k, v in self.info.items() if k != "warnings"}),
            "notes": self.notes, "warnings": _jsonable(self.warnings),
            "map": {"shape": list(a.shape), "spacing": self.map.spacing.tolist(), "origin": self.map.origin.tolist(),
                    "direction": self.map.direction.flatten().tolist(), "min": float(a.min()), "max": float(a.max()),
                    "sum": float(a.sum(dtype=np.float64)), "peak_index": list(self.peak_index())},
        }
        if self.trust is not None:
            out["trust"] = no_nan(_jsonable(self.trust))
        if self.regions is not None:
            out["regions"] = [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
                              for row in _jsonable(self.regions)]  # NaN (a region not scored) is not JSON
        return out


def warning_text(warning: dict) -> str:
    """One line for people: 'method: what is wrong; the fix'."""
    return f"{warning.get('method', '?')}: {warning.get('message', '')}; {warning.get('fix', '')}"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "shape"):
        return f"<array {tuple(value.shape)}>"
    return str(value)


def no_nan(value):
    """NaN (a check with nothing to measure) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def peak_voxel(a: np.ndarray) -> tuple[int, ...]:
    """The maximum's voxel; for a plateau (occlusion windows, painted regions) the one nearest its centroid."""
    first = np.unravel_index(int(np.argmax(a)), a.shape)
    top = np.argwhere(a == a[first])
    if len(top) == 1:
        return tuple(int(i) for i in first)
    nearest = top[int(np.argmin(((top - top.mean(0)) ** 2).sum(1)))]
    return tuple(int(i) for i in nearest)
