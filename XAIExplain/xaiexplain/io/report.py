"""The report of a run: one HTML page (images inside it) and a PDF of the same content.

Sections: input, model and software (versions, seeds, parameters: what reproduces every map), then per map
its three-plane preview, trust card and deletion/insertion curves against random maps, then the region
tables of every method side by side. Written from an explain run (``write_results(report=True)``, the CLI's
``--report``), from an output folder (``xaiexplain report``) or from Slicer (``logic.writeReport``). The PDF
is drawn with matplotlib, already a dependency.
"""
from __future__ import annotations

import base64
import html
import io
import tempfile
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core.volume import Volume
from ..protocol import REPORT_FILES
from .preview import preview_point, render_preview

VERDICT_COLOURS = {"pass": "#1b7f3b", "fail": "#b00020", "inconclusive": "#9a6700", "n/a": "#666666"}
TOP_REGIONS = 15


def _previews(image: Volume, attributions, outline) -> list[bytes]:
    point = preview_point(attributions)
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for n, att in enumerate(attributions):
            path = Path(folder) / f"{n}.png"
            render_preview(image, att, path, f"{att.method} - target {att.target.get('name')}", point=point,
                           outline=outline)
            out.append(path.read_bytes())
    return out


def _curve_figure(att):
    """Deletion and insertion curves of the map against its random twins; None without them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for c in (att.trust or {}).get("checks", []) if c["check"] in ("deletion", "insertion")
              and c.get("scores")]
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.0), dpi=100, squeeze=False)
    for ax, curve in zip(axes[0], curves):
        fractions = np.asarray(curve["fractions"]) * 100
        for n, scores in enumerate(curve.get("random_scores") or []):
            ax.plot(fractions, scores, color="#999999", linestyle="--", label="random maps" if n == 0 else None)
        ax.plot(fractions, curve["scores"], color="#c0392b", linewidth=2, label=att.method)
        ax.set_title(f"{curve['check']} (AUC {curve['auc']:.3f}): {curve['verdict']}", fontsize=9)
        ax.set_xlabel("voxels changed, %", fontsize=8)
        ax.set_ylabel(curve.get("output", "score"), fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def image_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def html_table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _verdict(verdict: str) -> str:
    return f'<b style="color:{VERDICT_COLOURS.get(verdict, "#000")}">{html.escape(verdict)}</b>'


def number_text(value, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else f"{value:.{digits}g}"


def _card_rows(card: dict) -> list[list]:
    return [[html.escape(c["title"]), _verdict(c["verdict"]), html.escape(c["text"]),
             f"{c['stated_passes']['forward']} / {c['stated_passes']['backward']}"] for c in card["checks"]]


def region_comparison(attributions) -> tuple[list[str], list[list]]:
    """Every method's region scores side by side: (header, rows), regions in the first method's rank order."""
    tables = [(a.method, {row["id"]: row for row in a.regions}) for a in attributions if a.regions]
    if not tables:
        return [], []
    first = sorted(tables[0][1].values(), key=lambda r: (r.get("rank") or 1e9))
    header = ["region"] + [f"{m} {k}" for m, _ in tables for k in ("score", "rank")]
    rows = []
    for region in first:
        row = [region["name"]]
        for _, rows_by_id in tables:
            other = rows_by_id.get(region["id"], {})
            row += [number_text(other.get("score")), str(other.get("rank", ""))]
        rows.append(row)
    return header, rows


def _facts(image: Volume, attributions, summary: dict) -> list[tuple[str, str]]:
    first = attributions[0]
    pred = first.prediction
    predicted = (f"{pred.get('predicted_name')} (p = {max(pred.get('probabilities') or [float('nan')]):.3f})"
                 if pred.get("task") == "classification" else "segmentation")
    model = first.model
    return [("inputs", ", ".join(summary.get("inputs", [])) or "(from memory)"),
            ("grid", f"{' x '.join(str(n) for n in image.array.shape[1:])} voxels, spacing "
                     f"{' x '.join(f'{v:.3g}' for v in image.spacing)} mm, {len(image.channel_names) or 1} channel(s)"),
            ("model", f"{model.get('source', '?')} ({model.get('format', '?')}, {model.get('task', '?')}, device "
                      f"{model.get('device', '?')}; sha256 {str(model.get('sha256'))[:16]}...)"),
            ("preprocessing", ", ".join(f"{k} {v}" for k, v in (model.get("preprocessing") or {}).items())),
            ("prediction", predicted), ("target", str(first.target.get("name", first.target))),
            ("software", ", ".join(f"{k} {v}" for k, v in sorted(first.versions.items()))),
            ("seed", str(first.seed)), ("command", summary.get("command", "")),
            ("written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]


def write_report(folder, image: Volume, attributions, summary: dict | None = None,
                 outline: Volume | None = None) -> list[Path]:
    """report.html and report.pdf of ``attributions`` over ``image`` in ``folder``; returns their paths."""
    folder = Path(folder)
    summary = summary or {}
    previews = _previews(image, attributions, outline)
    curves = [_curve_figure(att) for att in attributions]
    curve_png = [None if fig is None else figure_png(fig) for fig in curves]
    facts = _facts(image, attributions, summary)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>XAIExplain report</title><style>",
             "body{font-family:sans-serif;max-width:1250px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:left}img{max-width:100%}"
             "</style></head><body><h1>XAIExplain report</h1>",
             '<section id="input"><h2>Input, model and software</h2>',
             html_table(["", ""], [[html.escape(k), html.escape(v)] for k, v in facts]), "</section>",
             '<section id="maps"><h2>Maps</h2>']
    for att, preview, curve in zip(attributions, previews, curve_png):
        parts.append(f'<section class="map" id="map-{html.escape(att.method)}"><h3>{html.escape(att.method)}</h3>')
        parts.append(image_tag(preview, f"{att.method} preview"))
        params = ", ".join(f"{k}={v}" for k, v in att.params.items())
        parts.append(f"<p>parameters: {html.escape(params) or 'defaults'}; {att.timings.get('seconds', 0):.2f} s, "
                     f"{att.timings.get('forward', 0)} forward / {att.timings.get('backward', 0)} backward passes</p>")
        for warning in att.warnings:
            parts.append(f'<p style="color:#b00000"><b>WARNING</b>: {html.escape(warning.get("message", ""))}</p>')
        if att.trust:
            parts.append(f'<div class="trust"><h4>Trust card: {_verdict(att.trust["verdict"])}, '
                         f'{html.escape(att.trust["text"])}</h4>')
            parts.append(html_table(["check", "verdict", "in plain words", "passes (fwd / bwd)"],
                                    _card_rows(att.trust)))
            parts.append("</div>")
        else:
            parts.append("<p>No trust card: run with --check (or Check this map in Slicer).</p>")
        if curve is not None:
            parts.append(f'<div class="curves">{image_tag(curve, f"{att.method} curves")}</div>')
        parts.append("</section>")
    parts.append("</section>")
    header, rows = region_comparison(attributions)
    if rows:
        parts += ['<section id="regions"><h2>Regions, every method side by side</h2>',
                  html_table(header, [[html.escape(str(c)) for c in r] for r in rows[:TOP_REGIONS]]), "</section>"]
    parts.append("</body></html>")
    html_path = folder / REPORT_FILES[0]
    html_path.write_text("".join(parts), encoding="utf-8")
    pdf_path = folder / REPORT_FILES[1]
    _write_pdf(pdf_path, facts, attributions, previews, curve_png, (header, rows))
    return [html_path, pdf_path]


def _write_pdf(path: Path, facts, attributions, previews, curves, regions) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    a4 = (8.27, 11.69)
    with PdfPages(path) as pdf:
        fig = plt.figure(figsize=a4)
        lines = ["XAIExplain report", ""] + [line for k, v in facts
                                             for line in textwrap.wrap(f"{k}: {v}", 95, subsequent_indent="    ")]
        fig.text(0.06, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=8)
        pdf.savefig(fig)
        plt.close(fig)
        for att, preview, curve in zip(attributions, previews, curves):
            fig = plt.figure(figsize=a4)
            ax = fig.add_axes([0.03, 0.66, 0.94, 0.3])
            ax.imshow(mpimg.imread(io.BytesIO(preview), format="png"))
            ax.axis("off")
            if curve is not None:
                ax = fig.add_axes([0.08, 0.42, 0.84, 0.22])
                ax.imshow(mpimg.imread(io.BytesIO(curve), format="png"))
                ax.axis("off")
            text = [f"{att.method}: trust card {att.trust['verdict']} ({att.trust['text']})"] if att.trust else [
                f"{att.method}: no trust card"]
            for check in (att.trust or {}).get("checks", []):
                text += textwrap.wrap(f"{check['verdict'].upper():12} {check['title']}: {check['text']}", 110,
                                      subsequent_indent=" " * 13)
            fig.text(0.05, 0.4, "\n".join(text), va="top", family="monospace", fontsize=6.5)
            pdf.savefig(fig)
            plt.close(fig)
        header, rows = regions
        if rows:
            fig = plt.figure(figsize=a4)
            lines = ["Regions, every method side by side", "", " | ".join(header)]
            lines += [" | ".join(str(c) for c in row) for row in rows[:TOP_REGIONS]]
            fig.text(0.04, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=6)
            pdf.savefig(fig)
            plt.close(fig)
