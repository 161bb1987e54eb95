"""A cohort's cases: from a CSV (one row per case) or from a folder of volumes and DICOM series."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.targets import is_roi_keyword
from ..errors import XAIError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OPTIONAL_COLUMNS = ("mask", "roi", "reference", "labels", "group")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a case id is its output folder's name
CSV_HELP = ("write a header line 'case,input[,input2...][,mask][,roi][,reference][,labels][,group]' and one row per "
            "case (paths absolute or relative to the CSV)")


@dataclass(frozen=True)
class CohortCase:
    """One case: its id (the output folder's name), its input channels, and what explain takes per case: an
    outline ``mask`` (drawn, e.g. the ground-truth lesion), an ``roi`` (segmentation models: a mask file,
    'predicted' or 'component:N'), a ``reference`` volume (DeepSHAP) and ``labels``, the case's own label map
    (its regions); ``group``: a subgroup the findings are also split by (site, scanner, arm)."""

    case_id: str
    inputs: tuple[str, ...]
    mask: str | None = None
    roi: str | None = None
    reference: str | None = None
    labels: str | None = None
    group: str | None = None
    files: tuple[str, ...] = field(default=(), compare=False)  # every file the case reads (its checksums)

    def __post_init__(self):
        named = [*self.inputs, self.mask, self.reference, self.labels]
        if self.roi and not is_roi_keyword(self.roi):
            named.append(self.roi)
        object.__setattr__(self, "files", tuple(p for p in named if p))


def read_cases(source) -> list[CohortCase]:
    """The cases of ``source``: a CSV file or a folder. Refuses a malformed list at once (nothing runs); a
    case whose files are missing or unreadable fails on its own later, recorded, without stopping the others."""
    path = Path(source)
    if not path.exists():
        raise XAIError(f"cases '{path}' do not exist", "give a CSV of cases or a folder of volumes / DICOM series")
    cases = _from_folder(path) if path.is_dir() else _from_csv(path)
    if not cases:
        raise XAIError(f"'{path}' holds no cases",
                       CSV_HELP if path.is_file() else f"put volumes ({', '.join(VOLUME_SUFFIXES)}) or DICOM "
                                                       "series folders in it")
    seen: dict[str, int] = {}
    for number, case in enumerate(cases, 1):
        if not SAFE_ID.match(case.case_id):
            raise XAIError(f"case id '{case.case_id}' (case {number}) cannot name a folder",
                           "use letters, digits, '.', '_' and '-', starting with a letter or digit")
        if case.case_id.lower() in seen:
            raise XAIError(f"case id '{case.case_id}' is given twice (cases {seen[case.case_id.lower()]} and "
                           f"{number})", "give every case its own id")
        seen[case.case_id.lower()] = number
    return cases


def _from_csv(path: Path) -> list[CohortCase]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise XAIError(f"cannot read the cases CSV '{path}': {err}", CSV_HELP) from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    inputs = [i for i, name in enumerate(header) if re.fullmatch(r"input\d*", name)]
    unknown = [name for name in header
               if name not in ("case", *OPTIONAL_COLUMNS) and not re.fullmatch(r"input\d*", name)]
    if "case" not in header or not inputs or unknown or len(set(header)) < len(header):
        problem = (f"unknown column(s) {', '.join(unknown)}" if unknown else "a column named twice"
                   if len(set(header)) < len(header) else "no 'case' column" if "case" not in header
                   else "no 'input' column")
        raise XAIError(f"the cases CSV '{path}' has {problem}", CSV_HELP)
    cases = []
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise XAIError(f"line {line} of '{path}' has {len(row)} cells, the header {len(header)}", CSV_HELP)
        cell = {name: value.strip() for name, value in zip(header, row)}
        channels = [row[i].strip() for i in inputs]
        if not all(channels):
            raise XAIError(f"line {line} of '{path}' leaves an input empty", "give every case all its channels")
        resolve = lambda value: str(path.resolve().parent / value) if value and not Path(value).is_absolute() else value
        roi = cell.get("roi") or None
        cases.append(CohortCase(cell["case"], tuple(resolve(c) for c in channels),
                                mask=resolve(cell.get("mask")) or None,
                                roi=roi if roi is None or is_roi_keyword(roi) else resolve(roi),
                                reference=resolve(cell.get("reference")) or None,
                                labels=resolve(cell.get("labels")) or None, group=cell.get("group") or None))
    return cases


def _from_folder(path: Path) -> list[CohortCase]:
    """Every volume file (its id: the name without suffix) and every subfolder (a DICOM series: its name)."""
    cases = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        suffix = next((s for s in VOLUME_SUFFIXES if entry.name.lower().endswith(s)), None)
        if entry.is_dir():
            cases.append(CohortCase(entry.name, (str(entry.resolve()),)))
        elif suffix:
            cases.append(CohortCase(entry.name[:-len(suffix)], (str(entry.resolve()),)))
    return cases
