"""The SynthLesion benchmark and its report, on a tiny run (one case, one method, three metrics)."""
from __future__ import annotations

import csv
import json

import numpy as np

from xaiexplain.metrics.common import bootstrap_ci
from xaiexplain.synthlesion.benchmark import randomisation_verdicts, run_benchmark
from xaiexplain.synthlesion.report import write_report


def test_bootstrap_interval_brackets_the_mean_and_skips_nans():
    mean, low, high, n = bootstrap_ci([1.0, 2.0, 3.0, float("nan"), 4.0])
    assert (mean, n) == (2.5, 4) and 1.0 <= low < mean < high <= 4.0
    assert bootstrap_ci([0.3])[:3] == (0.3, 0.3, 0.3)
    assert np.isnan(bootstrap_ci([])[0])


def test_randomisation_verdict_is_inconclusive_when_unrelated_maps_already_agree():
    row = lambda method, passed, pair: {"model": "clean", "method": method, "randomisation_passed": passed,  # noqa
                                        "randomisation_baseline": pair}
    rows = [row("gradcam", 1.0, 0.8), row("gradcam", 0.0, 0.8), row("gradcam", 1.0, 0.7),
            row("regions", 1.0, 0.99), row("regions", 1.0, 0.97), row("gbp", 0.0, 0.6), row("gbp", float("nan"), 0.6)]
    verdicts = randomisation_verdicts(rows)["clean"]
    assert verdicts["gradcam"]["verdict"] == "pass" and abs(verdicts["gradcam"]["passed_share"] - 2 / 3) < 1e-12
    assert verdicts["regions"]["verdict"] == "inconclusive" and verdicts["gbp"]["verdict"] == "fail"


def test_tiny_benchmark_writes_the_report(tmp_path):
    result = run_benchmark(1, methods=["gradcam"], marked_cases=1, metrics=["deletion", "compactness", "coherence"])
    assert {r["model"] for r in result["rows"]} == {"clean", "shortcut"}
    clean = next(r for r in result["rows"] if r["model"] == "clean")
    assert clean["correct"] and clean["pointing_game"] == 1.0 and 0 < clean["deletion_auc"] < 1
    assert np.isnan(clean["max_sensitivity"])  # continuity was not asked for
    shortcut_cases = result["shortcut"]["models"]["shortcut"]["cases"]
    assert shortcut_cases[0]["marker_drives"]  # the marker alone turns the shortcut model to 'lesion'
    assert result["metric_settings"]["deletion"]["substrate"].startswith("counterfactual")
    written = write_report(result, tmp_path)
    md = written["markdown"].read_text(encoding="utf-8")
    assert "## clean model" in md and "## Shortcut test" in md and "| gradcam |" in md
    assert written["curves"].stat().st_size > 1000 and "<table>" in written["html"].read_text(encoding="utf-8")
    rows = list(csv.DictReader(open(written["csv"])))
    assert len(rows) == 2 and "deletion_auc" in rows[0]
    record = json.loads(written["json"].read_text())
    assert record["versions"]["torch"] and record["case_seeds"] == result["case_seeds"]


def test_benchmark_gives_region_methods_the_atlas_and_deepshap_the_counterfactual():
    """Region methods score the case's atlas regions (hit@1 against the lesion's region); DeepSHAP
    explains against the counterfactual, so its relevance lies in the lesion."""
    result = run_benchmark(1, methods=["occlusion-regions", "deepshap"], models=("clean",), marked_cases=1,
                           metrics=["coherence"])
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["occlusion-regions"]["hit_at_1"] == 1.0
    assert rows["deepshap"]["pointing_game"] == 1.0 and rows["deepshap"]["relevance_mass"] > 0.5
    # shortcut test: against the twin with neither lesion nor marker, the clean model's DeepSHAP map
    # has to choose between them, and chooses the lesion
    on_marker = result["shortcut"]["models"]["clean"]["methods"]["deepshap"]["on_marker"]
    assert on_marker[3] == 1 and on_marker[0] < 0.1, on_marker
