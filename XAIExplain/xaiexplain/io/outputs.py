"""Results on disk: <method>.nrrd, <method>.png, regions.csv, regions.nrrd and summary.json, written all or
nothing (:func:`write_results`) and read back into the same attributions (:func:`read_results`).

The file names are those of :mod:`xaiexplain.protocol`, which the Slicer module's worker shares."""
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

import numpy as np

from ..core.result import Attribution
from ..core.volume import Volume, read_volume, write_volume
from ..errors import XAIError
from ..protocol import (REGIONS_LABELS_FILE, REGIONS_TABLE_FILE, REPORT_FILES, SUMMARY_FILE, map_file, nearest_file,
                        preview_file, read_summary, shortcut_file)
from .nearest import has_nearest_patches, render_nearest_patches
from .preview import preview_point, render_preview

STAGING_PREFIX = ".xaiexplain-"  # then the writing process' id: a folder whose process is gone is stale


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove staging folders left beside an output folder by runs that were killed while writing."""
    removed = []
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        pid = path.name[len(STAGING_PREFIX):].split("-")[0]
        if path.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_output_folder(out_dir, files=(), overwrite: bool = False) -> list[Path]:
    """Refuse, before any computation, an output folder that cannot take the results, or that already holds some.

    ``files``: the names the run writes. A folder holding results (a ``summary.json`` and the files it lists,
    or any of ``files``) is refused unless ``overwrite``; returns those files (replaced, with ``overwrite``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise XAIError(f"the output folder {out_dir} is a file", "give a folder path (it is created if missing)")
    existing = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise XAIError(f"cannot write the output folder {out_dir}: {existing} is not a writable folder",
                       "choose a folder you can write to")
    held = stale_results(out_dir) + [out_dir / name for name in files if (out_dir / name).exists()]
    held = list(dict.fromkeys(held))
    if held and not overwrite:
        files = f"{len(held)} file{'s' if len(held) > 1 else ''}"
        raise XAIError(f"{out_dir} already holds results ({files}, e.g. {held[0].name})",
                       "give a new folder, or add --overwrite to replace those results")
    return held


def stale_results(folder: Path) -> list[Path]:
    """The files of the results a folder holds: its summary.json and the maps, previews and tables it lists."""
    try:
        items = read_summary(folder).get("results", [])
    except (XAIError, ValueError, OSError, AttributeError):  # no summary, or not one of ours
        return []
    names = {SUMMARY_FILE, REGIONS_TABLE_FILE, REGIONS_LABELS_FILE, *REPORT_FILES}
    for item in items if isinstance(items, list) else []:
        method = str(item.get("method", "")) if isinstance(item, dict) else ""
        if method:
            names |= {map_file(method), preview_file(method), shortcut_file(method), nearest_file(method)}
            names |= {p.name for p in folder.glob(map_file(method, "*"))}
    return sorted(folder / name for name in names if (folder / name).is_file())


def write_results(out_dir, volume: Volume, attributions: list[Attribution], summary_extra: dict | None = None,
                  previews: bool = True, overwrite: bool = False, outline: Volume | None = None,
                  report: bool = False) -> list[Path]:
    """Write every file into a temporary folder beside ``out_dir``, then move them in; on error nothing lands.

    Previews cut every map through the same voxel and draw ``outline`` (the ROI, or a mask) as a contour;
    ``report``: also report.html and report.pdf (:mod:`xaiexplain.io.report`). A folder that already holds
    results is refused unless ``overwrite``; then those results are replaced (files of theirs that the new
    ones do not have are removed, so the folder never mixes two runs)."""
    out_dir = Path(out_dir)
    stale = check_output_folder(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir.parent))
    try:
        names = []
        point = preview_point(attributions) if attributions else None
        for att in attributions:
            names.append(map_file(att.method))
            write_volume(att.map, staging / names[-1])
            if att.shortcut_region is not None:
                names.append(shortcut_file(att.method))
                write_volume(att.shortcut_region, staging / names[-1])
            if att.channel_maps is not None:
                for c, channel in enumerate(att.channel_maps.channel_names):
                    names.append(map_file(att.method, channel))
                    write_volume(att.channel_maps, staging / names[-1], channel=c)
            if previews:
                names.append(preview_file(att.method))
                render_preview(volume, att, staging / names[-1], f"{att.method} - target {att.target.get('name')}",
                               point=point, outline=outline)
                if has_nearest_patches(att):
                    names.append(nearest_file(att.method))
                    render_nearest_patches(att, staging / names[-1])
        if any(att.regions is not None for att in attributions):
            write_region_table(staging / REGIONS_TABLE_FILE, attributions)
            names.append(REGIONS_TABLE_FILE)
        labels = next((att.region_labels for att in attributions if att.region_labels is not None), None)
        if labels is not None:  # the regions in the subject (e.g. the registered atlas), for viewers
            write_volume(labels, staging / REGIONS_LABELS_FILE)
            names.append(REGIONS_LABELS_FILE)
        summary = {**(summary_extra or {}), "results": [a.to_dict() for a in attributions]}
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        names.append(SUMMARY_FILE)
        if report:
            from .report import write_report
            names += [p.name for p in write_report(staging, volume, attributions, summary, outline=outline)]
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        with _uninterrupted():
            for path in stale:
                path.unlink(missing_ok=True)
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
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, REGION_COLUMNS + extra, restval="")
        writer.writeheader()
        for att in attributions:
            for row in att.regions or []:
                writer.writerow({"method": att.method, **{k: _cell(v) for k, v in row.items()}})


def _cell(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return value


def read_results(folder) -> list[Attribution]:
    """The attributions an output folder holds, as :func:`write_results` was given them (previews aside).

    Maps (with their grid) and per-channel maps from the NRRD files; the record fields and the region
    tables from ``summary.json`` (full precision; ``regions.csv`` for a summary without them); the
    region labels from ``regions.nrrd``.
    """
    folder = Path(folder)
    items = read_summary(folder).get("results", [])
    labels_path = folder / REGIONS_LABELS_FILE
    labels = read_volume(labels_path) if labels_path.is_file() else None
    table_path = folder / REGIONS_TABLE_FILE
    out = []
    for item in items:
        method = item["method"]
        rows = item.get("regions")
        if rows is not None:  # JSON has no NaN: write_results stored a region not scored as null
            rows = [{k: float("nan") if v is None else v for k, v in row.items()} for row in rows]
        elif table_path.is_file():
            rows = read_region_table(table_path, method) or None
        info = dict(item.get("info") or {})
        if item.get("warnings"):  # in memory the method's info holds them (Attribution.warnings)
            info["warnings"] = [dict(w) for w in item["warnings"]]
        region = folder / shortcut_file(method)
        out.append(Attribution(
            map=_read_map(folder, method), method=method, signed=bool(item["signed"]),
            params=dict(item.get("params") or {}), target=dict(item.get("target") or {}),
            prediction=dict(item.get("prediction") or {}), timings=dict(item.get("timings") or {}),
            versions=dict(item.get("versions") or {}), seed=int(item.get("seed", 0)),
            model=dict(item.get("model") or {}), channel_maps=_read_channel_maps(folder, method, info),
            info=info, notes=list(item.get("notes") or []), regions=rows,
            region_labels=labels if rows is not None else None, trust=item.get("trust"),
            shortcut_region=read_volume(region) if region.is_file() else None))
    return out


def _read_map(folder: Path, method: str) -> Volume:
    path = folder / map_file(method)
    if not path.is_file():
        raise XAIError(f"{folder} has no map for '{method}' ({path.name})",
                       "give the complete folder an explain run wrote")
    volume = read_volume(path)
    # C order, as explain() makes it: the recorded sum (pairwise summation) then comes out the same
    return volume.with_array(np.ascontiguousarray(volume.array), [method])


def _read_channel_maps(folder: Path, method: str, info: dict) -> Volume | None:
    """Per-channel maps in the input's channel order (recorded in info); sorted by name if it is not."""
    channels = list(info.get("channels") or [])
    if not all((folder / map_file(method, c)).is_file() for c in channels):
        channels = []
    if len(channels) < 2:
        before, after = map_file(method, "\0").split("\0")
        channels = sorted(p.name[len(before):len(p.name) - len(after)] for p in folder.glob(map_file(method, "*")))
    if len(channels) < 2:
        return None
    parts = [read_volume(folder / map_file(method, c)) for c in channels]
    return parts[0].with_array(np.ascontiguousarray(np.concatenate([p.array for p in parts])), channels)


def read_region_table(path, method: str | None = None) -> list[dict]:
    """Rows of a ``regions.csv`` (those of ``method`` if given), typed: ids and ranks int, empty cells NaN."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if method is not None and rows and "method" in rows[0]:
        rows = [row for row in rows if row["method"] == method]
    # another method's columns are empty in every row of this one: not part of its table
    keep = [key for key in (rows[0] if rows else {}) if key != "method"
            and (key in REGION_COLUMNS or any(row[key] != "" for row in rows))]
    return [{key: _typed(key, row[key]) for key in keep} for row in rows]


def _typed(key: str, value: str):
    if key == "name":
        return value
    if value in ("", None):
        return float("nan")
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if key in ("id", "rank") else number


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
