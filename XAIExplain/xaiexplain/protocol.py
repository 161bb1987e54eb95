"""The contract between the engine and its callers, importable without torch.

The Slicer module's worker reads what ``xaiexplain explain`` writes: progress
lines on stdout and the files of an output folder. Both sides import these names
from here, so the format has one definition.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import XAIError

# -- progress lines (``xaiexplain explain --progress-lines``) ----------------------------------------
PROGRESS_PREFIX = "xaiexplain-progress "


def progress_line(fraction: float, message: str) -> str:
    """One machine-readable progress line: the prefix and a JSON object."""
    return PROGRESS_PREFIX + json.dumps({"fraction": round(min(max(float(fraction), 0.0), 1.0), 4),
                                         "message": str(message)})


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """(fraction, message) from a progress line, or None for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        data = json.loads(line[len(PROGRESS_PREFIX):])
        return float(data["fraction"]), str(data.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None


# -- the files of an output folder ---------------------------------------------------------------
SUMMARY_FILE = "summary.json"
REGIONS_TABLE_FILE = "regions.csv"
REGIONS_LABELS_FILE = "regions.nrrd"


def map_file(method: str, channel: str | None = None) -> str:
    """The map of ``method`` (summed over channels), or of one input ``channel``."""
    return f"{method}.nrrd" if channel is None else f"{method}.{channel}.nrrd"


# Methods whose maps show the prediction itself, not evidence for it (viewers give them their own colours).
PREDICTION_MAPS = ("probability", "entropy", "tta-uncertainty", "mc-dropout")


def preview_file(method: str) -> str:
    return f"{method}.png"


def nearest_file(method: str) -> str:
    """A prototype network's explanation: its top prototypes' nearest training patches (``io.nearest``)."""
    return f"{method}-nearest.png"


def shortcut_file(method: str) -> str:
    """The shortcut check's offending region of ``method``'s map (labels: trust.shortcut.LABELS)."""
    return f"{method}_shortcut.nrrd"


# The labels of a shortcut region file: which kind of suspect area each voxel is in.
SHORTCUT_LABELS = {1: "outside the body", 2: "image border", 3: "bright object"}
REPORT_FILES = ("report.html", "report.pdf")


def read_summary(folder) -> dict:
    """The ``summary.json`` of an output folder (a clear error if the folder holds no results)."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        raise XAIError(f"{folder} holds no {SUMMARY_FILE}", "give the folder an explain run wrote")
    return json.loads(path.read_text(encoding="utf-8"))


# -- where things are on disk ----------------------------------------------------------------------
def models_dir() -> Path:
    """Where the shipped demo bundles live: a repository checkout or the Slicer module's install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "Resources" / "Models", here.parent.parent / "Resources" / "Models",
                      here.parent / "Resources" / "Models"):
        if candidate.is_dir():
            return candidate
    raise XAIError("the demo models are not installed next to the engine", "reinstall XAIExplain from its repository")


def demo_bundle(name: str = "synthlesion_classifier") -> Path:
    """Path of a shipped demo bundle: 'synthlesion_classifier', 'synthlesion_shortcut', or the prototype
    networks 'synthlesion_prototypes' and 'synthlesion_prototypes_shortcut'."""
    return models_dir() / name


def cache_dir() -> Path:
    """Where derived data is cached: $XAIEXPLAIN_CACHE or ~/.cache/xaiexplain."""
    return Path(os.environ.get("XAIEXPLAIN_CACHE") or Path.home() / ".cache" / "xaiexplain")
