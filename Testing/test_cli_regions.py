"""The command line with regions: atlas or user labels in, map + regions.csv + summary out; errors and Ctrl-C."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xaiexplain import read_volume, write_volume
from xaiexplain.cli.main import main
from xaiexplain.protocol import demo_bundle
from xaiexplain.synthlesion.synth import region_names

ROOT = Path(__file__).resolve().parent.parent


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_region_occlusion_with_the_atlas_writes_map_regions_csv_and_summary(tmp_path, positive_case, capsys):
    image = tmp_path / "case.nrrd"
    write_volume(positive_case.volume, image)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "occlusion-regions",
                 "--atlas", "harvard-oxford", "--registration", "none", "--target", "lesion", "--out", str(out),
                 "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["occlusion-regions.nrrd", "occlusion-regions.png",
                                                     "regions.csv", "regions.nrrd", "summary.json"]
    rows = read_csv(out / "regions.csv")
    assert list(rows[0])[:6] == ["method", "id", "name", "volume_ml", "score", "rank"]
    assert {"probability_drop", "logit_drop"} <= set(rows[0])
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > 90
    assert rows[0]["name"] == positive_case.region_name  # the lesion's region comes first
    written = read_volume(out / "occlusion-regions.nrrd")
    assert written.same_grid(read_volume(image))
    top = int(rows[0]["id"])
    summary = json.loads((out / "summary.json").read_text())
    result = summary["results"][0]
    assert result["regions"][0]["id"] == top and result["info"]["regions"]["source"] == "harvard-oxford"
    assert result["params"]["baseline"] == "blur" and result["info"]["batch_size"] >= 1
    # the map paints each region with its score: its maximum is the top region's, over that region's labels
    assert np.isclose(written.array[0].max(), float(rows[0]["score"]), rtol=1e-4)
    labels = read_volume(out / "regions.nrrd")
    assert labels.same_grid(read_volume(image))
    assert set(np.unique(labels.array[0])) - {0} == {int(r["id"]) for r in rows}
    assert np.allclose(written.array[0][labels.array[0] == top], float(rows[0]["score"]), rtol=1e-4)
    assert "top region:" in capsys.readouterr().out


def test_user_regions_with_a_names_csv_give_a_table_for_every_method(tmp_path, positive_case):
    image, labels, names = tmp_path / "case.nii.gz", tmp_path / "labels.nrrd", tmp_path / "names.csv"
    write_volume(positive_case.volume, image)
    known = region_names()
    present = [int(v) for v in np.unique(positive_case.labels.array) if v][:12]  # a dozen regions: a quick run
    if positive_case.region_id not in present:
        present.append(positive_case.region_id)
    kept = np.where(np.isin(positive_case.labels.array, present), positive_case.labels.array, 0)
    write_volume(positive_case.labels.with_array(kept), labels)
    names.write_text("id,name\n" + "".join(f"{k},{known[k]}\n" for k in present))
    out = tmp_path / "out"
    code = main(["explain", "--model", str(demo_bundle()), "--input", str(image), "--method", "occlusion-regions",
                 "--method", "gradient", "--regions", str(labels), "--region-names", str(names),
                 "--baseline", "mean", "--out", str(out), "--quiet"])
    assert code == 0
    rows = read_csv(out / "regions.csv")
    by_method = {m: [r for r in rows if r["method"] == m] for m in ("occlusion-regions", "gradient")}
    assert len(by_method["occlusion-regions"]) == len(by_method["gradient"]) == len(present)
    assert by_method["occlusion-regions"][0]["name"] == positive_case.region_name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"][0]["params"]["baseline"] == "mean"


def test_bad_region_inputs_give_one_line_errors_and_write_nothing(tmp_path, positive_case, capsys):
    image, labels = tmp_path / "case.nrrd", tmp_path / "labels.nrrd"
    write_volume(positive_case.volume, image)
    write_volume(positive_case.labels, labels)
    torso = tmp_path / "torso.nrrd"
    body = np.zeros((1, 60, 60, 160), np.float32)
    body[0, 10:50, 10:50, 5:155] = 100.0
    write_volume(positive_case.volume.__class__(body, (3.0, 3.0, 4.0)), torso)
    base = ["explain", "--model", str(demo_bundle()), "--method", "occlusion-regions", "--quiet"]
    for extra, message in ((["--input", str(image), "--regions", str(labels)], "have no names"),
                           (["--input", str(image), "--regions", str(labels), "--atlas", "harvard-oxford"],
                            "only one region source"),
                           (["--input", str(image), "--baseline", "noise"], "unknown baseline"),
                           (["--input", str(torso), "--atlas", "harvard-oxford"], "does not look like a head")):
        out = tmp_path / "out"
        capsys.readouterr()
        assert main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_ctrl_c_leaves_no_partial_files(tmp_path, positive_case):
    image = tmp_path / "case.nrrd"
    write_volume(positive_case.volume, image)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "XAIExplain")}
    process = subprocess.Popen([sys.executable, "-m", "xaiexplain.cli.main", "explain", "--model", str(demo_bundle()),
                                "--input", str(image), "--method", "occlusion",
                                "--param", "occlusion.stride=2", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    deadline = time.time() + 120
    while "occlusion " not in seen and time.time() < deadline:  # wait until the occlusion batches run
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, seen + rest
    assert "cancelled: no output was written" in rest
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".xaiexplain-")]
