"""Write results: <method>.nrrd, <method>.png, regions.csv, regions.nrrd and summary.json, all or nothing."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from .preview import render_preview
from ..core.result import Attribution
from ..core.volume import Volume, write_volume


def write_results(out_dir, volume: Volume, attributions: list[Attribution], summary_extra: dict | None = None,
                  previews: bool = True) -> list[Path]:
    """Write every file into a temporary folder beside ``out_dir``, then move them in; on error nothing lands."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".xaiexplain-", dir=out_dir.parent))
    try:
        names = []
        for att in attributions:
            write_volume(att.map, staging / f"{att.method}.nrrd")
            names.append(f"{att.method}.nrrd")
            if att.channel_maps is not None:
                for c, channel in enumerate(att.channel_maps.channel_names):
                    write_volume(att.channel_maps, staging / f"{att.method}.{channel}.nrrd", channel=c)
                    names.append(f"{att.method}.{channel}.nrrd")
            if previews:
                render_preview(volume, att, staging / f"{att.method}.png",
                               f"{att.method} - target {att.target.get('name')}")
                names.append(f"{att.method}.png")
        if any(att.regions is not None for att in attributions):
            write_region_table(staging / "regions.csv", attributions)
            names.append("regions.csv")
        labels = next((att.region_labels for att in attributions if att.region_labels is not None), None)
        if labels is not None:  # the regions in the subject (e.g. the registered atlas), for viewers
            write_volume(labels, staging / "regions.nrrd")
            names.append("regions.nrrd")
        summary = {**(summary_extra or {}), "results": [a.to_dict() for a in attributions]}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        names.append("summary.json")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        with _uninterrupted():
            for name in names:
                os.replace(staging / name, out_dir / name)
                written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


REGION_COLUMNS = ["method", "id", "name", "volume_ml", "score", "rank", "sum", "mean", "positive_share"]


def write_region_table(path: Path, attributions: list[Attribution]) -> None:
    """One row per method and region, in rank order; method-specific columns (e.g. logit_drop) follow."""
    extra = []
    for att in attributions:
        for row in att.regions or []:
            extra += [key for key in row if key not in REGION_COLUMNS and key not in extra]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, REGION_COLUMNS + extra, restval="")
        writer.writeheader()
        for att in attributions:
            for row in att.regions or []:
                writer.writerow({"method": att.method, **{k: _cell(v) for k, v in row.items()}})


def _cell(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return value


@contextmanager
def _uninterrupted():
    """Ctrl-C waits until every file is moved in: the folder gets all the results or none."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
