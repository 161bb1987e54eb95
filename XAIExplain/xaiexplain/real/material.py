"""Where the real material lives: deepbet's networks (PyPI) and the Colin27 scans (Debian mricron-data).

Nothing is downloaded: each function finds an installed file or says how to install it.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import XAIError

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")


def _templates() -> Path:
    return Path(os.environ.get("XAIEXPLAIN_MRICRON", MRICRON_TEMPLATES))


def colin27(name: str = "ch2") -> Path:
    """``ch2`` (Colin27 T1 with skull, 1 mm) or ``ch2bet`` (an independent brain extraction)."""
    path = _templates() / f"{name}.nii.gz"
    if not path.exists():
        raise XAIError(f"the Colin27 scan '{path}' is not installed",
                       "install Debian's mricron-data (apt-get install mricron-data), "
                       "or set XAIEXPLAIN_MRICRON to its templates folder")
    return path


def deepbet_model(which: str = "bbox_model") -> Path:
    """One of deepbet's two TorchScript networks: ``bbox_model`` (128^3, whole head) or ``model`` (256^3, crop)."""
    spec = importlib.util.find_spec("deepbet")  # the wheel puts its networks in a top-level data/ folder
    path = None if spec is None else Path(spec.origin).parents[1] / "data" / "models" / f"{which}.pt"
    if path is None or not path.exists():
        raise XAIError("deepbet's trained networks are not installed", "pip install deepbet==1.0.2 --no-deps")
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0
