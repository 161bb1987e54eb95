"""The metric registry drives everything: evaluate()'s record, the summary row, the benchmark and its report,
and ``xaiexplain metrics``. A metric registered here appears in all of them, and nowhere once it is gone."""
from __future__ import annotations

import json
import math

import pytest

from xaiexplain import METRICS, get_metric
from xaiexplain.cli.main import main
from xaiexplain.errors import XAIError
from xaiexplain.metrics import REGISTRY, Metric, evaluate, register, summary_columns, summary_row, voxel_map


class MapPeak(Metric):
    """A tiny metric: the map's peak, and the score of the unperturbed input (one pass of the shared scorer)."""

    name, title, co12 = "map_peak", "The map's largest value", "compactness"
    defaults = {"scale": 1.0}
    cost_text = "1 forward pass"
    columns = {"map_peak": "peak", "map_score": "score"}
    headline = {"map_peak": ("map peak", 3)}

    def cost(self, setting, method, params, *, x, model, n_classes):
        return {"forward": 1, "backward": 0}

    def run(self, ev, setting):
        score = float(ev.scorer("logit").scores(ev.x)[0])
        return {"peak": setting["scale"] * float(voxel_map(ev.attribution).max()), "score": score}


@pytest.fixture
def peak():
    register(MapPeak)
    try:
        yield REGISTRY["map_peak"]
    finally:
        REGISTRY.pop("map_peak", None)


def listed(capsys, *args) -> str:
    assert main(["metrics", *args]) == 0
    return capsys.readouterr().out


def test_the_top_level_names_are_the_registry():
    assert METRICS is REGISTRY and get_metric("deletion") is REGISTRY["deletion"]
    assert list(REGISTRY)[:3] == ["deletion", "insertion", "faithfulness_correlation"]
    with pytest.raises(XAIError, match="unknown metric"):
        get_metric("beauty")


def test_a_registered_metric_is_evaluated_summarised_and_listed(peak, demo, demo_x, capsys):
    record = evaluate(demo, demo_x, "gradient", target=1, metrics=["compactness", "map_peak"],
                      settings={"map_peak": {"scale": 2.0}})
    value = record["metrics"]["map_peak"]
    assert value["property"] == "compactness" and value["settings"] == {"scale": 2.0}
    assert value["passes"] == value["stated_passes"] == {"forward": 1, "backward": 0}
    assert value["peak"] > 0 and math.isfinite(value["score"])
    row = summary_row(record)
    assert row["map_peak"] == value["peak"] and row["map_score"] == value["score"]
    assert list(row)[1:] == summary_columns() and summary_columns()[-3:] == ["map_score", "passes_forward",
                                                                                 "passes_backward"]
    assert math.isnan(row["deletion_auc"])  # registered, not run
    with pytest.raises(XAIError, match="no setting"):
        evaluate(demo, demo_x, "gradient", metrics=["map_peak"], settings={"map_peak": {"colour": 1}})
    described = {m["name"]: m for m in json.loads(listed(capsys, "--json"))}
    assert described["map_peak"] == {"name": "map_peak", "title": MapPeak.title, "property": "compactness",
                                     "settings": {"scale": 1.0}, "cost": "1 forward pass",
                                     "columns": ["map_peak", "map_score"], "reference": ""}
    assert "map_peak" in listed(capsys)


def test_an_unregistered_metric_is_gone_everywhere(capsys):
    register(MapPeak)
    REGISTRY.pop("map_peak")
    assert "map_peak" not in summary_columns()
    assert "map_peak" not in listed(capsys)
    assert "map_peak" not in {m["name"] for m in json.loads(listed(capsys, "--json"))}


def test_the_benchmark_and_its_report_read_the_registry(peak, tmp_path):
    from xaiexplain.synthlesion.benchmark import run_benchmark
    from xaiexplain.synthlesion.report import write_report

    result = run_benchmark(1, methods=["gradcam"], models=("clean",), marked_cases=0, metrics=["map_peak"])
    row = result["rows"][0]
    assert row["map_peak"] > 0 and math.isnan(row["deletion_auc"])
    assert result["aggregates"][0]["map_peak"]["n"] == 1
    assert result["metric_settings"]["map_peak"] == {"scale": 1.0}
    lines = write_report(result, tmp_path)["markdown"].read_text(encoding="utf-8").splitlines()
    header = lines[lines.index("## clean model") + 2]  # the clean model's headline table
    assert header.startswith("| method |") and "| map peak |" in header


def test_metrics_command_lists_every_metric_with_property_cost_and_settings(capsys):
    text = listed(capsys).splitlines()
    assert text[0].split()[:2] == ["name", "property"]
    lines = {line.split()[0]: line for line in text[1:]}
    assert list(lines) == list(REGISTRY)
    assert "correctness" in lines["deletion"] and "steps + 1 forward passes" in lines["deletion"]
    assert "steps=50" in lines["deletion"] and "tolerance_mm=0.0" in lines["coherence"]
    described = json.loads(listed(capsys, "--json"))
    assert [m["name"] for m in described] == list(REGISTRY)
    assert {m["name"]: m["property"] for m in described}["continuity"] == "continuity"
    assert all(set(m) >= {"name", "property", "settings", "cost"} for m in described)
