"""deepbet's whole-head network (LinkNet3d, TorchScript, softmax output) as the engine sees it.

deepbet (Fisch et al. 2024) finds the brain at 128^3 on the whole head, then refines it on
a crop at 256^3. The first network is the one explained here: it sees the whole scan.
Its own preprocessing resizes the RAS volume to 128^3 and scales intensities between the
0.5th and 99.5th percentiles; the metadata below says the same in the engine's terms
(1.5 mm isotropic, crop/pad to 128^3), and that the output is softmax probabilities.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .material import deepbet_model

METADATA = {
    "class_names": ["background", "brain"],
    "in_channels": 1,
    "task": "segmentation",
    "output": "probabilities",  # the network ends in a softmax: never take a second one
    "preprocessing": {
        "orientation": "RAS",
        "spacing": [1.5, 1.5, 1.5],
        "spatial_size": [128, 128, 128],
        "intensity": {"kind": "percentiles", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True},
    },
}


def write_model(folder) -> Path:
    """A copy of deepbet's whole-head network in ``folder`` with its metadata beside it (``<model>.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "deepbet_bbox.pt"
    shutil.copyfile(deepbet_model("bbox_model"), target)
    target.with_suffix(".json").write_text(json.dumps(METADATA, indent=2), encoding="utf-8")
    return target
