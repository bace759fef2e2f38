"""The suite report: one self-contained `report.html` (charts embedded, no network needed)
and a `report.md` beside it, built from stored runs only.

Sections: setup; the headline facts per transport; the recommendation matrix with its rules;
each experiment's reading (two sentences computed from its numbers) and charts; what could
not run here and why.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import facts as facts_mod
from analysis.matrix import RULES, matrix
from presentation.charts_net import CAPTIONS as NET_CAPTIONS
from presentation.markdown import CHART_CAPTIONS

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

CAPTIONS = {**CHART_CAPTIONS, **NET_CAPTIONS}
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


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _html_table(df: pd.DataFrame, classes: Callable[[str, object], str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for col, value in row.items():
            cls = classes(str(col), value) if classes else ""
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(_fmt(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _md_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _extremes(series: pd.Series) -> tuple[str, float, str, float]:
    s = series.dropna()
    return str(s.idxmin()), float(s.min()), str(s.idxmax()), float(s.max())


def reading(run: StoredRun, facts: pd.DataFrame) -> str:
    """Two sentences on what this run shows, computed from its numbers."""
    name = str(run.meta.get("experiment"))
    f = facts
    try:
        if name == "latency":
            lo, lo_v, hi, hi_v = _extremes(f["latency_p99_ms"])
            blo, blo_v, bhi, bhi_v = _extremes(f["bytes_per_token"])
            return (
                f"Token latency p99 ranged from {lo_v:.2f} ms ({lo}) to {hi_v:.1f} ms ({hi}). "
                f"Bytes down per token ranged from {blo_v:.0f} ({blo}) to {bhi_v:.0f} ({bhi})."
            )
        if name in ("rtt", "loss"):
            worst = run.tokens[run.tokens["sweep_value"] == run.tokens["sweep_value"].max()]
            p99 = worst.groupby("transport")["latency_ms"].quantile(0.99)
            lo, lo_v, hi, hi_v = _extremes(p99)
            label = worst["condition"].iloc[0]
            return (
                f"At {label}, token latency p99 ranged from {lo_v:.1f} ms ({lo}) to "
                f"{hi_v:.1f} ms ({hi}). Compare with the first condition in the charts."
            )
        if name == "reconnect":
            ok = f[(f["cut_completed"] >= 1) & (f["cut_lost"] == 0)].index.tolist()
            slow, slow_v = str(f["cut_recovery_ms"].idxmax()), float(f["cut_recovery_ms"].max())
            done = ", ".join(ok) or "none"
            return (
                f"Completed every stream through the cuts with no token lost: {done}. "
                f"The slowest recovery was {slow_v:.0f} ms ({slow})."
            )
        if name == "cancel":
            stops = f[f["cancel_wasted"] <= 2].index.tolist()
            hi, hi_v = str(f["leave_wasted"].idxmax()), float(f["leave_wasted"].max())
            return (
                f"An explicit cancel stopped generation within 2 tokens on: "
                f"{', '.join(stops) or 'none'}. Just leaving let the server generate up to "
                f"{hi_v:.0f} tokens for nobody ({hi})."
            )
        if name == "proxy":
            lo, lo_v, _, _ = _extremes(f["proxy_min_spread"])
            streamed = f[f["proxy_min_spread"] >= 0.8].index.tolist()
            return (
                f"Streamed as generated behind every nginx mode: {', '.join(streamed) or 'none'}. "
                f"The worst arrival spread was {lo_v:.2f} ({lo}; 0 means one burst at the end)."
            )
        if name == "idle-timeout":
            ok = f[f["idle_timeout_ok"] >= 1].index.tolist()
            done = ", ".join(ok) or "none"
            return (
                f"With keep-alives, these completed behind a 1 s proxy read timeout: {done}. "
                "The reconnect chart shows what the same streams went through without them."
            )
        if name == "idle":
            lo, lo_v, hi, hi_v = _extremes(f["idle_conn_kib"])
            return (
                f"Server memory per idle connection ranged from {lo_v:.1f} KiB ({lo}) to "
                f"{hi_v:.1f} KiB ({hi}). Measured as RSS growth over the connections held."
            )
        if name == "scale":
            lo, lo_v, hi, hi_v = _extremes(f["capacity_n"])
            return (
                f"Capacity at the p99 target ranged from {lo_v:.0f} streams ({lo}) to "
                f"{hi_v:.0f} ({hi}). Beyond it the single server process runs out of CPU "
                "and the loop falls behind."
            )
        if name == "relay":
            lo, lo_v, hi, hi_v = _extremes(f["relay_added_p50_ms"])
            return (
                f"Latency added to the model's stream (p50) ranged from {lo_v:.2f} ms ({lo}) to "
                f"{hi_v:.1f} ms ({hi}). A follow-up request for the rest of an answer cost up to "
                f"{f['continuation_ms'].max():.0f} ms."
            )
    except (KeyError, ValueError):
        return "Not enough measured figures for a reading."
    return ""


def _charts(run: StoredRun) -> list[tuple[str, Path]]:
    return [(CAPTIONS.get(p.name, p.stem), p) for p in sorted(run.path.glob("*.png"))]


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


def write(suite_dir: Path, runs: list[StoredRun], skipped: dict[str, str]) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` into `suite_dir`; both paths."""
    table = facts_mod.collect(runs)
    grid = matrix(table)
    units = {k: f"{k} ({u})" if u else k for k, (u, _) in facts_mod.FIGURES.items()}
    head = table.dropna(axis=1, how="all").rename(columns=units).reset_index()
    setup = _setup(runs[0].meta) if runs else []
    h = [f"<!doctype html><meta charset=utf-8><title>pushlab report</title><style>{STYLE}</style>",
         "<h1>pushlab: server-push transports for token streaming</h1>",
         "<h2>Setup</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in setup) + "</ul>",
         "<h2>Headline per transport</h2>", _html_table(head),
         "<p>" + "<br>".join(html.escape(f"{k}: {m}") for k, (_, m) in facts_mod.FIGURES.items()
                             if units[k] in head.columns) + "</p>",
         "<h2>Recommendation matrix</h2>",
         "<p>Each cell follows from the headline figures by the rule on its row; "
         "n/a: not measured.</p>",
         _html_table(grid, _verdict_class)]  # fmt: skip
    md = ["# pushlab report", "", "## Setup", "", *(f"- {s}" for s in setup), "",
          "## Headline per transport", "", _md_table(head), "", "## Recommendation matrix", "",
          _md_table(grid), ""]  # fmt: skip
    for run in runs:
        name = str(run.meta.get("experiment"))
        text = reading(run, table)
        h.append(f"<h2>{html.escape(name)}</h2><p class=reading>{html.escape(text)}</p>")
        md += [f"## {name}", "", text, ""]
        for caption, path in _charts(run):
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


__all__ = ["RULES", "reading", "write"]
