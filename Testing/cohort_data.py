"""SynthLesion cohorts on disk for the cohort tests: volumes, label maps, names and a cases CSV."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from xaiexplain.core.volume import read_volume, write_volume
from xaiexplain.protocol import map_file
from xaiexplain.synthlesion.synth import generate_case, region_names

LESION_REGION = "Right_Precentral_Gyrus"


def write_cohort(folder: Path, n: int, seed: int = 7000, marked=lambda i: False, labels: bool = True) -> Path:
    """``n`` positives with the lesion in LESION_REGION (``marked(i)``: with the corner marker); returns the
    cases CSV (paths relative to it, a group column: marked / plain)."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (folder / "names.csv").write_text("id,name\n" + "".join(f"{k},{v}\n" for k, v in region_names().items()))
    rows = []
    for i in range(n):
        case = generate_case(seed + i, positive=True, region=LESION_REGION, marker=marked(i))
        write_volume(case.volume, data / f"c{i}.nrrd")
        row = [f"case{i:02d}", f"data/c{i}.nrrd"]
        if labels:
            write_volume(case.labels, data / f"c{i}_labels.nrrd")
            row.append(f"data/c{i}_labels.nrrd")
        rows.append(row + ["marked" if marked(i) else "plain"])
    path = folder / "cases.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "input"] + (["labels"] if labels else []) + ["group"])
        writer.writerows(rows)
    return path


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def log_events(out: Path) -> list[dict]:
    import json

    path = out / "cohort-log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def same_maps(a: Path, b: Path, method: str) -> None:
    """The map ``method`` wrote in folders ``a`` and ``b``: same grid, same values."""
    x, y = read_volume(a / map_file(method)), read_volume(b / map_file(method))
    assert x.array.shape == y.array.shape
    np.testing.assert_allclose(x.spacing, y.spacing)
    np.testing.assert_allclose(x.origin, y.origin)
    scale = float(np.abs(y.array).max())
    assert scale > 0
    np.testing.assert_allclose(x.array, y.array, rtol=1e-5, atol=1e-6 * scale)
