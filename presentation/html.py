"""The suite report: one self-contained `report.html` (charts embedded, no network needed)
and a `report.md` beside it, built from stored runs only.

Sections: setup; the headline facts per transport; the recommendation matrix with its rules;
each experiment's reading (two sentences computed from its numbers) and charts; what could
not run here and why.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import facts as facts_mod
from analysis.matrix import RULES, matrix
from presentation.markdown import captions, format_value, markdown_table
from presentation.views import ExperimentView, ReportedExperiment

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
td.good{background:#d4edda}td.fair{background:#fff3cd}td.poor{background:#f8d7da}
td.na{color:#999}td.rule{text-align:left;font-size:12px;color:#555;max-width:420px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.reading{background:#f6f8fa;padding:.6em 1em;border-left:3px solid #888}
"""


def _html_table(df: pd.DataFrame, classes: Callable[[str, object], str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for col, value in row.items():
            cls = classes(str(col), value) if classes else ""
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(format_value(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _charts(run: StoredRun, view: ExperimentView | None) -> list[tuple[str, Path]]:
    names = captions(view)
    return [(names.get(p.name, p.stem), p) for p in sorted(run.path.glob("*.png"))]


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _setup(meta: dict[str, Any]) -> list[str]:
    machine, python = meta.get("machine") or {}, meta.get("python") or {}
    packages = ", ".join(f"{k} {v}" for k, v in (meta.get("packages") or {}).items() if v)
    return [
        f"Machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"kernel {machine.get('kernel')}",
        f"Python {python.get('version')}; {packages}",
        f"pushlab {meta.get('pushlab_version')}, commit {meta.get('git_commit')}"
        + (" (uncommitted changes)" if meta.get("git_dirty") else ""),
    ]


def _verdict_class(column: str, value: object) -> str:
    classes = {"good": "good", "fair": "fair", "poor": "poor", "n/a": "na"}
    return classes.get(str(value), "rule" if column == "rule" else "")


def write(suite_dir: Path, runs: list[StoredRun], skipped: dict[str, str],
          experiments: Mapping[str, ReportedExperiment]) -> tuple[Path, Path]:  # fmt: skip
    """Write `report.html` and `report.md` into `suite_dir`; both paths. `experiments` (name
    -> descriptor) give each run's facts, reading, charts' captions."""
    table = facts_mod.collect(runs, experiments)
    grid = matrix(table)
    figures = facts_mod.figures(experiments.values())
    units = {k: f"{k} ({u})" if u else k for k, (u, _) in figures.items()}
    head = table.dropna(axis=1, how="all").rename(columns=units).reset_index()
    setup = _setup(runs[0].meta) if runs else []
    h = [f"<!doctype html><meta charset=utf-8><title>pushlab report</title><style>{STYLE}</style>",
         "<h1>pushlab: server-push transports for token streaming</h1>",
         "<h2>Setup</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in setup) + "</ul>",
         "<h2>Headline per transport</h2>", _html_table(head),
         "<p>" + "<br>".join(html.escape(f"{k}: {m}") for k, (_, m) in figures.items()
                             if units[k] in head.columns) + "</p>",
         "<h2>Recommendation matrix</h2>",
         "<p>Each cell follows from the headline figures by the rule on its row; "
         "n/a: not measured.</p>",
         _html_table(grid, _verdict_class)]  # fmt: skip
    md = ["# pushlab report", "", "## Setup", "", *(f"- {s}" for s in setup), "",
          "## Headline per transport", "", markdown_table(head), "", "## Recommendation matrix", "",
          markdown_table(grid), ""]  # fmt: skip
    for run in runs:
        name = str(run.meta.get("experiment"))
        view = experiments.get(name)
        text = view.read(run, table) if view is not None else ""
        h.append(f"<h2>{html.escape(name)}</h2><p class=reading>{html.escape(text)}</p>")
        md += [f"## {name}", "", text, ""]
        for caption, path in _charts(run, view):
            h.append(f"<h3>{html.escape(caption)}</h3>{_img(path)}")
            md += [f"### {caption}", "", f"![{caption}]({os.path.relpath(path, suite_dir)})", ""]
    if skipped:
        items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items())
        h.append(f"<h2>Not run here</h2><ul>{items}</ul>")
        md += ["## Not run here", "", *(f"- {k}: {v}" for k, v in skipped.items()), ""]
    html_path, md_path = suite_dir / "report.html", suite_dir / "report.md"
    html_path.write_text("\n".join(h), encoding="utf-8")
    md_path.write_text("\n".join(md), encoding="utf-8")
    return html_path, md_path


__all__ = ["RULES", "write"]
