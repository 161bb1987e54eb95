"""Write a benchmark result: Markdown and HTML report, deletion/insertion curves (PNG), CSV and JSON."""
from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from ..core.result import _jsonable
from ..metrics import REGISTRY as METRICS

# The headline table's column order; any other headline column of a registered metric follows these.
HEADLINE_ORDER = ("deletion_auc", "insertion_auc", "faithfulness_correlation", "pointing_game", "relevance_mass",
                  "relevance_rank", "average_precision", "gini", "voxels_50pct", "max_sensitivity",
                  "target_similarity", "completeness_error", "cascade_sensitivity")


def headline() -> list[tuple[str, str, int]]:
    """(column, heading, digits) of the headline table, one row per method: the registered metrics' own."""
    columns = {c: spec for metric in METRICS.values() for c, spec in metric.headline.items()}
    order = [c for c in HEADLINE_ORDER if c in columns] + [c for c in columns if c not in HEADLINE_ORDER]
    return [(c, *columns[c]) for c in order]


def _cell(stat: dict, digits: int) -> str:
    if stat["n"] == 0:
        return "–"
    if stat["n"] == 1 or stat["low"] == stat["high"]:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def headline_rows(result: dict, model: str) -> tuple[list[str], list[list[str]]]:
    table = headline()
    header = ["method"] + [h for _, h, _ in table] + ["randomisation (final ρ / pair ρ)", "passes fwd/bwd"]
    rows = []
    verdicts = result["randomisation"].get(model, {})
    for entry in result["aggregates"]:
        if entry["model"] != model:
            continue
        verdict = verdicts.get(entry["method"], {})
        randomisation = (f"{verdict.get('verdict', '–')} ({entry['randomisation_spearman']['mean']:.2f} / "
                         f"{entry['randomisation_baseline']['mean']:.2f})")
        rows.append([entry["method"]] + [_cell(entry[c], d) for c, _, d in table] + [
            randomisation, f"{entry['passes_forward']['mean']:.0f} / {entry['passes_backward']['mean']:.0f}"])
    return header, rows


def shortcut_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    models = list(result["shortcut"]["models"])
    header = ["method"] + [f"{m}: top-10% mass on marker" for m in models] + [
        f"{m}: within {result['shortcut']['tolerance_mm']:g} mm" for m in models]
    rows = []
    for method in result["methods"]:
        cells = [method]
        for key in ("on_marker", "within_tolerance"):
            for m in models:
                stat = result["shortcut"]["models"][m]["methods"].get(method, {}).get(key)
                cells.append(_cell(dict(zip(("mean", "low", "high", "n"), stat)), 2) if stat else "–")
        rows.append(cells)
    return header, rows


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plot_curves(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        for c, curve in enumerate(("deletion", "insertion")):
            ax = axes[r][c]
            for method in result["methods"]:
                runs = [e for e in result["curves"]
                        if e["model"] == model and e["method"] == method and e["curve"] == curve]
                if runs:
                    ax.plot(runs[0]["fractions"], np.mean([e["scores"] for e in runs], 0), label=method)
            ax.set_title(f"{model} model: {curve} (mean over cases)")
            ax.set_xlabel("fraction of voxels replaced" if curve == "deletion" else "fraction of voxels inserted")
            ends = [e["fractions"][-1] for e in result["curves"] if e["model"] == model and e["curve"] == curve]
            ax.set_xlim(0, max(ends) if ends else 1)
            ax.set_ylabel("p(lesion)")
            ax.set_ylim(-0.02, 1.02)
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
            break
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _intro(result: dict) -> str:
    v = result["versions"]
    return (f"{result['n_cases']} SynthLesion positives (seeds {result['case_seeds'][0]}…), "
            f"{result['shortcut']['n_cases']} marked positives for the shortcut test; "
            f"{'full' if result['full'] else 'quick'} metric settings; "
            f"{result['seconds']:.0f} s on {result['device']}; "
            f"torch {v.get('torch')}, monai {v.get('monai')}. Mean [bootstrap 95% CI]; coherence on correctly "
            "classified positives only; deletion/insertion from/into the exact counterfactual.")


REPORT_FILES = {"json": "benchmark.json", "csv": "benchmark.csv", "markdown": "report.md", "html": "report.html",
                "curves": "curves.png"}


def write_report(result: dict, out) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {kind: out / name for kind, name in REPORT_FILES.items()}
    written["json"].write_text(json.dumps(_jsonable(result), indent=1), encoding="utf-8")
    columns = list(dict.fromkeys(k for r in result["rows"] for k in r))
    with open(written["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result["rows"])
    plot_curves(result, written["curves"])
    sections = [("Shortcut test", shortcut_rows(result))]
    for model in result["models"]:
        sections.insert(len(sections) - 1, (f"{model} model", headline_rows(result, model)))
    md = ["# SynthLesion benchmark", "", _intro(result), ""]
    body = [f"<h1>SynthLesion benchmark</h1><p>{html.escape(_intro(result))}</p>"]
    for title, (header, rows) in sections:
        md += [f"## {title}", "", markdown_table(header, rows), ""]
        body.append(f"<h2>{html.escape(title)}</h2>{html_table(header, rows)}")
    md += ["![deletion and insertion curves](curves.png)", ""]
    body.append('<img src="curves.png" alt="deletion and insertion curves">')
    written["markdown"].write_text("\n".join(md), encoding="utf-8")
    style = "table{border-collapse:collapse;font:12px sans-serif}td,th{border:1px solid #ccc;padding:3px}"
    written["html"].write_text(f"<!doctype html><meta charset='utf-8'><style>{style}</style>{''.join(body)}",
                               encoding="utf-8")
    return written
