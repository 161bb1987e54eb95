"""Cohort findings: which regions drive the model across the cases, and where its trust cards flag a shortcut.

Read from the finished cases' ``summary.json`` files (what each case's explain run wrote), so findings can be
remade at any time, for all the cases or for a shard's. Per method and region, over the cases that scored the
region: the score's mean with its percentile-bootstrap 95% interval and its median, the mean share of the
positive evidence, how often the region ranks first (top-1 share) and its mean rank; the same per predicted
class and per group (the cases CSV's ``group`` column: site, scanner, arm). Per method and the same subsets,
the share of the positive evidence outside every region (a shortcut off the anatomy shows there first), and
the share of cases whose shortcut check failed (with its interval) and which cases.
"""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..core.result import no_nan
from ..metrics.common import bootstrap_ci
from .findings_report import ALL, write_findings_html

FINDINGS_FILES = ("findings.json", "findings.csv", "findings.html")
CSV_COLUMNS = ["method", "cases_in", "region", "cases", "score_mean", "score_low", "score_high", "score_median",
               "positive_share_mean", "positive_share_low", "positive_share_high", "top1_share", "rank_mean"]


def _region_stats(rows: list[dict], cases: int) -> dict:
    """One region over the cases whose tables hold it (``cases``: how many cases the group has)."""
    scores = [r["score"] for r in rows if r.get("score") is not None]
    shares = [r["positive_share"] for r in rows if r.get("positive_share") is not None]
    mean, low, high, n = bootstrap_ci(scores)
    share, share_low, share_high, _ = bootstrap_ci(shares)
    return {"cases": n, "score_mean": mean, "score_low": low, "score_high": high,
            "score_median": float(np.median(scores)) if scores else float("nan"),
            "positive_share_mean": share, "positive_share_low": share_low, "positive_share_high": share_high,
            "top1_share": sum(r.get("rank") == 1 for r in rows) / max(cases, 1),
            "rank_mean": float(np.mean([r["rank"] for r in rows])) if rows else float("nan")}


def _regions(by_case: dict[str, list[dict]]) -> list[dict]:
    """The regions of a group of cases, those most often first (then highest mean score) first."""
    per_region = defaultdict(list)
    for rows in by_case.values():
        for row in rows:
            per_region[row["name"]].append(row)
    table = [{"region": name, **_region_stats(rows, len(by_case))} for name, rows in per_region.items()]
    table.sort(key=lambda r: (-r["top1_share"], -r["score_mean"] if r["score_mean"] == r["score_mean"] else np.inf))
    return table


def _shortcut(cards: dict[str, dict]) -> dict | None:
    """The shortcut check across the cases whose trust card has it."""
    checked = {case: next((c for c in card["checks"] if c["check"] == "shortcut"), None)
               for case, card in cards.items()}
    checked = {case: check for case, check in checked.items() if check and check["verdict"] != "n/a"}
    if not checked:
        return None
    flagged = sorted(case for case, check in checked.items() if check["verdict"] == "fail")
    share, low, high, n = bootstrap_ci([float(case in flagged) for case in checked])
    return {"cases": n, "flagged": flagged, "flagged_share": share, "flagged_low": low, "flagged_high": high,
            "inconclusive": sorted(case for case, check in checked.items() if check["verdict"] == "inconclusive"),
            "share_in_suspect_areas_mean": float(np.mean([check.get("share", np.nan) for check in checked.values()]))}


def cohort_findings(summaries: dict[str, dict], failed: dict[str, str] | None = None,
                    groups: dict[str, str] | None = None) -> dict:
    """Findings from {case: summary.json}; ``failed``: {case: its one-line error} (listed, not counted);
    ``groups``: {case: its group} (the cases CSV's group column), a subset of findings per group."""
    methods = defaultdict(dict)  # method -> case -> its result
    for case, summary in sorted(summaries.items()):
        for result in summary.get("results", []):
            methods[result["method"]][case] = result
    predicted = {case: (s["results"][0].get("prediction") or {}).get("predicted_name") for case, s in summaries.items()
                 if s.get("results")}
    subsets = {f"predicted {name}": {c for c, p in predicted.items() if p == name}
               for name in sorted(set(predicted.values()) - {None}, key=str)}
    subsets.update({f"group {name}": {c for c, g in (groups or {}).items() if g == name}
                    for name in sorted(set((groups or {}).values()) - {None}, key=str)})
    findings = {"cases": len(summaries), "failed": dict(sorted((failed or {}).items())),
                "predicted": {str(k): v for k, v in sorted(Counter(predicted.values()).items(), key=str)},
                "groups": {str(g): n for g, n in sorted(Counter(g for c, g in (groups or {}).items()
                                                                if c in summaries and g is not None).items())},
                "methods": {}}
    for method, results in methods.items():
        tables = {case: r["regions"] for case, r in results.items() if r.get("regions")}
        cards = {case: r["trust"] for case, r in results.items() if r.get("trust")}
        chosen = {ALL: set(results), **subsets}
        outside = {c: max(0.0, 1.0 - sum(r.get("positive_share") or 0.0 for r in t)) for c, t in tables.items()}
        findings["methods"][method] = {
            "cases": len(results),
            "outside_regions": {name: dict(zip(("mean", "low", "high", "cases"),
                                               bootstrap_ci([v for c, v in outside.items() if c in cases])))
                                for name, cases in chosen.items() if cases & set(tables)},
            "regions": {name: _regions({c: t for c, t in tables.items() if c in cases})
                        for name, cases in chosen.items() if cases & set(tables)},
            "shortcut": {name: found for name, cases in chosen.items()
                         if (found := _shortcut({c: card for c, card in cards.items() if c in cases}))},
            "trust": dict(Counter(card["verdict"] for card in cards.values()))}
    return findings


def write_findings(out, findings: dict) -> list[Path]:
    """findings.json, findings.csv (a row per method, predicted class and region) and findings.html."""
    out = Path(out)
    paths = [out / name for name in FINDINGS_FILES]
    paths[0].write_text(json.dumps(no_nan(findings), indent=1) + "\n", encoding="utf-8")
    with open(paths[1], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for method, found in findings["methods"].items():
            for group, table in found["regions"].items():
                for row in table:
                    writer.writerow({"method": method, "cases_in": group,
                                     **{k: _csv_cell(v) for k, v in row.items()}})
    write_findings_html(paths[2], findings)
    return paths


def _csv_cell(value):
    return "" if isinstance(value, float) and value != value else round(value, 6) if isinstance(value, float) else value
