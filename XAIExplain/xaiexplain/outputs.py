"""Write results: <method>.nrrd, <method>.png and summary.json, all or nothing."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .preview import render_preview
from .result import Attribution
from .volume import Volume, write_volume


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
        summary = {**(summary_extra or {}), "results": [a.to_dict() for a in attributions]}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        names.append("summary.json")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in names:
            os.replace(staging / name, out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
