"""Cohorts in one process: the cases list, resuming, failures recorded, settings guarded, shards, findings."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import SimpleITK as sitk
import numpy as np
import pytest
from cohort_data import LESION_REGION, checksums, log_events, same_maps, write_cohort

from xaiexplain.cli.main import main
from xaiexplain.cohort.cases import read_cases
from xaiexplain.core.volume import write_volume
from xaiexplain.errors import XAIError
from xaiexplain.protocol import demo_bundle, map_file
from xaiexplain.synthlesion.synth import generate_case

CLEAN, SHORTCUT = str(demo_bundle("synthlesion_classifier")), str(demo_bundle("synthlesion_shortcut"))


def _cohort(cases, out, *extra, model=CLEAN) -> int:
    return main(["cohort", "--model", model, "--cases", str(cases), "--method", "gradient", "--no-previews",
                 "--out", str(out), "--quiet", *extra])


def _record(out: Path, case: str) -> dict:
    return json.loads((out / "manifest" / f"{case}.json").read_text())


def test_cases_from_a_csv_and_from_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "cases.csv"
    listing.write_text("case,input,input2,mask,roi,group\nA1,t1.nii.gz,/abs/flair.nii.gz,m.nrrd,predicted,site1\n"
                       "b-2,x.nrrd,y.nrrd,,component:2,\n")
    a, b = read_cases(listing)
    assert a.inputs == (str(tmp_path / "sub" / "t1.nii.gz"), "/abs/flair.nii.gz")
    assert a.mask == str(tmp_path / "sub" / "m.nrrd") and a.roi == "predicted" and a.group == "site1"
    assert b.roi == "component:2" and b.mask is None and b.group is None
    assert a.files == (*a.inputs, a.mask)  # what its checksums cover: not the ROI keyword
    bad = {"input\nc1,a.nrrd\n": "no 'case' column", "case,input,age\nc1,a.nrrd,3\n": "unknown column(s) age",
           "case,input\nc1,a.nrrd\nC1,b.nrrd\n": "given twice", "case,input\n../up,a.nrrd\n": "cannot name a folder",
           "case,input\nc1,a.nrrd,extra\n": "has 3 cells", "case,input,input2\nc1,a.nrrd,\n": "leaves an input empty",
           "case,input\n": "holds no cases"}
    for text, words in bad.items():
        listing.write_text(text)
        with pytest.raises(XAIError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
            read_cases(listing)
        assert "\n" not in str(err.value)
    with pytest.raises(XAIError, match="do not exist"):
        read_cases(tmp_path / "nowhere.csv")

    from test_volume_io import write_dicom_series  # Testing/ is on the path

    folder = tmp_path / "scans"
    folder.mkdir()
    case = generate_case(3, positive=True)
    write_volume(case.volume, folder / "p1.nii.gz")
    write_volume(case.volume, folder / "p2.nrrd")
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".hidden.nrrd").write_text("")
    image = sitk.GetImageFromArray((case.volume.array[0] * 1000).astype(np.int16).transpose(2, 1, 0))
    write_dicom_series(image[:, :, :8], folder / "p3")
    assert [(c.case_id, Path(c.inputs[0]).name) for c in read_cases(folder)] == [
        ("p1", "p1.nii.gz"), ("p2", "p2.nrrd"), ("p3", "p3")]


def test_a_cohort_resumes_records_failures_and_guards_its_folder(tmp_path, capsys):
    cases = write_cohort(tmp_path, 3, labels=False)
    data = tmp_path / "data"
    shutil.copy(data / "c0.nrrd", data / "whole.nrrd")
    (data / "truncated.nrrd").write_bytes((data / "c0.nrrd").read_bytes()[:1500])
    with open(cases, "a") as handle:
        handle.write("missing,data/absent.nrrd,plain\ntruncated,data/truncated.nrrd,plain\n")
    before = checksums(data)
    out = tmp_path / "run"
    assert _cohort(cases, out) == 1  # some cases failed: the command says so in its exit status
    printed = capsys.readouterr().out
    assert "3 cases explained, 0 already finished, 2 failed" in printed
    assert "does not exist" in _record(out, "missing")["error"]
    assert "cannot read volume" in _record(out, "truncated")["error"]
    assert checksums(data) == before  # the inputs are never modified
    assert not (out / "missing").exists() and not (out / "truncated").exists()  # nothing half-written
    # each case's folder is what `xaiexplain explain` writes for that case
    single = tmp_path / "single"
    assert main(["explain", "--model", CLEAN, "--input", str(data / "c1.nrrd"), "--method", "gradient",
                 "--no-previews", "--out", str(single), "--quiet"]) == 0
    same_maps(out / "case01", single, "gradient")
    assert sorted(p.name for p in (out / "case01").iterdir()) == sorted(p.name for p in single.iterdir())

    # a rerun does no work for finished cases, and tries the failed ones again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("case*/*")}
    events = len(log_events(out))
    assert _cohort(cases, out) == 1
    assert "0 cases explained, 3 already finished, 2 failed" in capsys.readouterr().out
    assert [e["case"] for e in log_events(out)[events:]] == ["missing", "truncated"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("case*/*")} == stamps

    # a fixed input runs; a changed input runs again; a case whose run died half-way (record not done) runs again
    shutil.copy(data / "whole.nrrd", data / "absent.nrrd")
    write_volume(generate_case(99, positive=True).volume, data / "c2.nrrd")
    record = _record(out, "case00")
    (out / "manifest" / "case00.json").write_text(json.dumps({**record, "status": "running"}))
    (out / ".cases").mkdir(exist_ok=True)
    (out / ".cases" / ".xaiexplain-999999999-case00").mkdir()  # staging of a dead process: cleared
    events = len(log_events(out))
    assert _cohort(cases, out) == 1
    ran = [(e["case"], e["event"]) for e in log_events(out)[events:]]
    assert sorted(ran) == [("case00", "done"), ("case02", "done"), ("missing", "done"), ("truncated", "failed")]
    assert not (out / ".cases" / ".xaiexplain-999999999-case00").exists()

    # another model or other settings: refused before any work, unless --overwrite (then every case again)
    capsys.readouterr()
    assert _cohort(cases, out, "--seed", "1") == 2
    assert "holds a cohort run with other settings" in capsys.readouterr().err
    assert _cohort(cases, out, model=SHORTCUT) == 2
    assert "another model" in capsys.readouterr().err
    assert main(["cohort", "--model", CLEAN, "--cases", str(cases), "--method", "gradcam", "--no-previews",
                 "--out", str(out), "--quiet", "--overwrite"]) == 1
    assert not list(out.glob(f"*/{map_file('gradient')}"))  # no folder mixes two runs
    assert len(list(out.glob(f"*/{map_file('gradcam')}"))) == 4
    # a folder that holds something else is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    assert _cohort(cases, tmp_path / "other") == 2
    assert "holds no cohort run" in capsys.readouterr().err


def test_shards_split_a_cohort_and_share_one_folder(tmp_path, capsys):
    cases = write_cohort(tmp_path, 3, labels=False)
    out = tmp_path / "run"
    assert _cohort(cases, out, "--shard", "2/2") == 0
    assert sorted(p.stem for p in (out / "manifest").glob("*.json")) == ["case01"]
    assert _cohort(cases, out, "--shard", "1/2") == 0
    assert sorted(p.stem for p in (out / "manifest").glob("*.json")) == ["case00", "case01", "case02"]
    assert _cohort(cases, out, "--shard", "3/2") == 2
    assert "cannot read --shard '3/2'" in capsys.readouterr().err


def test_ray_is_optional_and_asked_for_by_name(monkeypatch):
    from xaiexplain.cohort.ray_workers import RayCluster

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(XAIError, match=r"--ray needs Ray, which is not installed.*xaiexplain\[cohort\]"):
        RayCluster("auto", workers=2, cpus=1.0, gpus=0.0)


def _first_share(out: Path, region: str) -> float:
    """Share of the cases whose own regions.csv ranks ``region`` first (read without the findings code)."""
    firsts = []
    for table in out.glob("case*/regions.csv"):
        with open(table) as handle:
            rows = [r for r in csv.DictReader(handle) if r["method"] == "gradient"]
        firsts.append(next(r["name"] for r in rows if r["rank"] == "1") == region)
    return float(np.mean(firsts))


def test_cohort_findings_name_the_lesion_region_and_flag_the_shortcut_model(tmp_path, capsys):
    cases = write_cohort(tmp_path, 24, marked=lambda i: i % 2 == 1)
    assert _cohort(cases, tmp_path / "unnamed") == 2  # label maps without names: refused before any case
    assert "label maps have no names" in capsys.readouterr().err and not (tmp_path / "unnamed").exists()
    runs = {}
    for name, model in (("clean", CLEAN), ("shortcut", SHORTCUT)):
        runs[name] = tmp_path / name
        assert _cohort(cases, runs[name], "--region-names", str(tmp_path / "names.csv"), "--target", "lesion",
                       "--check", "shortcut", model=model) == 0
    found = {name: json.loads((out / "findings.json").read_text())["methods"]["gradient"]
             for name, out in runs.items()}
    clean = found["clean"]["regions"]["all cases"]
    assert clean[0]["region"] == LESION_REGION and clean[0]["cases"] == 24
    assert clean[0]["top1_share"] >= 0.9
    assert clean[0]["top1_share"] == pytest.approx(_first_share(runs["clean"], LESION_REGION))
    assert clean[0]["score_low"] <= clean[0]["score_mean"] <= clean[0]["score_high"]
    assert clean[0]["positive_share_mean"] > clean[1]["positive_share_mean"]
    flagged = {name: {subset: f["shortcut"][f"group {subset}"]["flagged_share"] for subset in ("marked", "plain")}
               for name, f in found.items()}
    assert flagged["shortcut"]["marked"] >= 0.8  # the shortcut model leans on the marker: flagged
    assert flagged["clean"]["marked"] <= 0.2 and flagged["clean"]["plain"] <= 0.2
    outside = {name: f["outside_regions"]["group marked"]["mean"] for name, f in found.items()}
    assert outside["shortcut"] > outside["clean"] + 0.15  # its evidence lies off the anatomy's regions
    shortcut = json.loads((runs["shortcut"] / "findings.json").read_text())
    assert shortcut["groups"] == {"marked": 12, "plain": 12}
    assert shortcut["predicted"].get("lesion", 0) >= 10  # it calls the marked ones lesions
    with open(runs["clean"] / "findings.csv") as handle:
        rows = list(csv.DictReader(handle))
    first = next(r for r in rows if r["cases_in"] == "all cases")
    assert first["region"] == LESION_REGION and float(first["top1_share"]) == pytest.approx(clean[0]["top1_share"])
    page = (runs["shortcut"] / "findings.html").read_text()
    assert page.count("<img") == 1 and "Shortcut check, group marked" in page
    assert f"gradient: first region {LESION_REGION}" in capsys.readouterr().out
