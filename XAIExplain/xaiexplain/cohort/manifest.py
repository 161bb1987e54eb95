"""The cohort's manifest: one record per case under ``DIR/manifest/<case>.json``, each replaced atomically.

A record says what the case was run from (its files' checksums, the model's, the explain settings) and how it
ended (done / failed with its one-line error). A case counts as finished only when its record says done with
the same key and its folder holds its summary: a run that died half-way is never taken as finished. One file
per case lets any scheduler (SLURM arrays, torchrun, ``--shard``) split a cohort without sharing a file."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..core.provenance import file_sha256
from ..protocol import SUMMARY_FILE

RECORDS = "manifest"


def case_key(case, model_digest: str | None, settings: dict) -> dict:
    """What a finished case must match to be skipped: its files' checksums (None: missing), the model's, and
    the explain settings."""
    sums = {}
    for name in case.files:
        try:
            sums[name] = file_sha256(name)
        except OSError:
            sums[name] = None  # missing or unreadable: the case will fail with explain's own message
    return {"files": sums, "model": model_digest,
            "settings": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()}


def record_path(out, case_id: str) -> Path:
    return Path(out) / RECORDS / f"{case_id}.json"


def read_record(out, case_id: str) -> dict | None:
    try:
        return json.loads(record_path(out, case_id).read_text())
    except (OSError, ValueError):
        return None


def write_record(out, record: dict) -> None:
    """Replace the case's record atomically (a temporary file renamed over it)."""
    path = record_path(out, record["case"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(record, indent=1, default=str))
    os.replace(temporary, path)


def is_finished(out, case_id: str, key: dict) -> bool:
    record = read_record(out, case_id)
    return (record is not None and record.get("status") == "done" and record.get("key") == key
            and (Path(out) / case_id / SUMMARY_FILE).is_file())


def all_records(out) -> list[dict]:
    folder = Path(out) / RECORDS
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except ValueError:
            continue  # being replaced by another shard right now: its own run reports it
    return records
