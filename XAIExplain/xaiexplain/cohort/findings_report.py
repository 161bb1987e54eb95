"""findings.html: the cohort's findings for people (plots inside the page)."""
from __future__ import annotations

import html
from pathlib import Path

from ..io.report import figure_png, html_table, image_tag, number_text

ALL = "all cases"  # the subset of every case (the others: one per predicted class and per group)
TOP_REGIONS = 12


def _region_figure(method: str, table: list[dict]):
    """The regions most often first: mean score with its 95% interval, and the top-1 share."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[:TOP_REGIONS][::-1]
    names = [r["region"][:40] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.35 * len(rows) + 1.3), sharey=True)
    means = [r["score_mean"] for r in rows]
    errors = [[m - r["score_low"] for m, r in zip(means, rows)], [r["score_high"] - m for m, r in zip(means, rows)]]
    left.barh(names, means, xerr=errors, color="#3b6ea5", capsize=2)
    left.set_xlabel("region score: mean and 95% interval", fontsize=8)
    right.barh(names, [r["top1_share"] for r in rows], color="#c0504d")
    right.set_xlim(0, 1)
    right.set_xlabel("share of cases where it ranks first", fontsize=8)
    left.tick_params(labelsize=7)
    right.tick_params(labelsize=7)
    fig.suptitle(f"{method}: regions across the cohort", fontsize=10)
    fig.tight_layout()
    return fig


def _region_rows(table: list[dict]) -> list[list[str]]:
    return [[html.escape(r["region"]), str(r["cases"]),
             f"{number_text(r['score_mean'])} [{number_text(r['score_low'])}, {number_text(r['score_high'])}]",
             number_text(r["score_median"]), f"{r['positive_share_mean']:.1%}" if r["positive_share_mean"] == r[
                 "positive_share_mean"] else "", f"{r['top1_share']:.0%}", number_text(r["rank_mean"], 3)]
            for r in table[:TOP_REGIONS]]


def write_findings_html(path: Path, findings: dict) -> None:
    header = ["region", "cases", "score: mean [95% interval]", "median", "positive evidence", "ranks first",
              "mean rank"]
    predicted = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in findings["predicted"].items())
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>XAIExplain cohort findings</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:left}img{max-width:100%}"
             "</style></head><body><h1>Cohort findings</h1>",
             f"<p>{findings['cases']} cases explained; predicted: {predicted or 'n/a'}; "
             + "".join(f"group {html.escape(k)}: {v} cases; " for k, v in findings["groups"].items())
             + f"{len(findings['failed'])} failed.</p>"]
    for method, found in findings["methods"].items():
        parts.append(f'<section id="method-{html.escape(method)}"><h2>{html.escape(method)}</h2>')
        for subset, shortcut in found["shortcut"].items():
            parts.append(f"<p><b>Shortcut check, {html.escape(subset)}</b>: flagged in {len(shortcut['flagged'])} of "
                         f"{shortcut['cases']} cases ({shortcut['flagged_share']:.0%}, 95% interval "
                         f"{shortcut['flagged_low']:.0%} to {shortcut['flagged_high']:.0%}); on average "
                         f"{shortcut['share_in_suspect_areas_mean']:.0%} of the top evidence lies in suspect areas "
                         "(off the body, on the borders, on bright objects)."
                         + (f" Flagged: {html.escape(', '.join(shortcut['flagged']))}." if shortcut["flagged"]
                            and subset == ALL else "") + "</p>")
        for group, table in found["regions"].items():
            parts.append(f"<h3>Regions, {html.escape(group)}</h3>")
            off = found["outside_regions"][group]
            parts.append(f"<p>Positive evidence outside every region: {off['mean']:.1%} on average (95% interval "
                         f"{off['low']:.1%} to {off['high']:.1%}).</p>")
            if group == ALL and table:
                parts.append(image_tag(figure_png(_region_figure(method, table)), f"{method} regions"))
            parts.append(html_table(header, _region_rows(table)))
        if not found["regions"]:
            parts.append("<p>No region tables: run the cohort with --atlas, --regions or a labels column.</p>")
        parts.append("</section>")
    if findings["failed"]:
        parts.append("<section id='failed'><h2>Failed cases</h2>"
                     + html_table(["case", "error"], [[html.escape(c), html.escape(e)]
                                                      for c, e in findings["failed"].items()]) + "</section>")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
