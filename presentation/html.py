"""The suite report: one self-contained `report.html` (charts embedded, no network needed)
and a `report.md` beside it with the same content, built from stored runs only.

The first screen answers (readable at 1280x800 without scrolling sideways): one paragraph per
scenario computed from the matrix, the run's size and conditions, what was skipped and the
command that runs it, and a headline table of at most eight figures with plain names. Then
the matrix, each cell's grade opening onto its evidence (default -> with the fix where a
setting decides it); the other figures; the setup and the runs' sizes; each experiment's
reading and charts.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import facts as facts_mod
from analysis.matrix import RULES, Setting, Verdict, VerdictRow, answer, verdict_rows
from presentation import summary
from presentation.markdown import captions, markdown_rows
from presentation.views import ExperimentView, ReportedExperiment

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

TITLE = "pushlab: which server-push transport for streaming tokens"
STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:.8em auto;padding:0 1em;
 color:#222;font-size:14px;line-height:1.35}
h1{font-size:22px;margin:.2em 0 .4em}h2{font-size:18px;margin:1.2em 0 .4em}
h3{font-size:15px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
th:first-child,td:first-child{text-align:left}
ul.answers{margin:.3em 0;padding-left:1.2em}ul.answers li{margin:.15em 0}
p.size,div.skipped,p.lede{margin:.35em 0}div.skipped ul{margin:.1em 0;padding-left:1.2em}
code{font-size:12px;background:#f3f3f3;padding:0 2px}
table.matrix{table-layout:fixed;width:100%}table.matrix td{text-align:left}
table.matrix th.scenario{width:25%}table.matrix td{padding:3px 5px}
.rule,.setting{font-size:12px;color:#555;margin-top:2px}.setting b{color:#222}
table.matrix th{text-align:left}
details.v{display:inline-block;padding:1px 4px;border-radius:3px;margin:1px 0}
details.v summary{cursor:pointer;font-weight:600;list-style:none;text-decoration:underline dotted}
details.v summary::-webkit-details-marker{display:none}
details.v[open]{display:block}details.v div{font-size:12px;font-weight:normal;padding:2px 0}
.good{background:#d4edda}.fair{background:#fff3cd}.poor{background:#f8d7da}
.undecided{background:#dce3f7}.na{color:#888;background:#f4f4f4}
.arrow{color:#555}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.reading{background:#f6f8fa;padding:.6em 1em;border-left:3px solid #888}
.question{color:#555;font-style:italic}
table.text td{text-align:left}table.figures td:last-child{text-align:left}
"""
GRADE_CLASS = {"good": "good", "fair": "fair", "poor": "poor", "undecided": "undecided",
               "n/a": "na"}  # fmt: skip
ARROW = "\u2192"
LEDE = ("The transports graded per scenario from this run's measurements (the rules, and each "
        "grade's figures and sample sizes, are in the matrix below).")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Page:
    """Everything both reports say, computed once from the stored runs."""

    table: pd.DataFrame  # analysis.facts.collect
    rows: list[VerdictRow]
    headline: list[summary.Column]
    rest: list[summary.Column]
    size: str
    skipped: list[tuple[str, str, str]]  # (experiment, reason, command)
    setup: list[str]
    runs: list[tuple[str, str, str]]  # (experiment, question, size)


def build(runs: list[StoredRun], skipped: Mapping[str, str],
          experiments: Mapping[str, ReportedExperiment], quick: bool | None) -> Page:  # fmt: skip
    """The report's content from stored runs; `quick` names the suite's size when known."""
    table = facts_mod.collect(runs, experiments)
    head, rest = summary.split(summary.columns(table, facts_mod.figures(experiments.values())))
    specs = {_name(run): dict(run.meta.get("spec") or {}) for run in runs}
    sizes = []
    for name, spec in specs.items():
        view = experiments.get(name)
        sizes.append((name, view.question if view is not None else "", summary.run_size(spec)))
    setup = _setup(runs[0].meta) if runs else []
    machine = (runs[0].meta.get("machine") or {}) if runs else {}
    size = summary.size_sentence(specs, quick)
    if machine.get("cpu_count"):
        size += f" Measured on {machine['cpu_count']} CPUs ({machine.get('cpu_model')})."
    harness = summary.harness_sentence(runs)
    size += f" {harness}" if harness else ""
    return Page(table, verdict_rows(table), head, rest, size,
                summary.skipped_lines(skipped, quick), setup, sizes)  # fmt: skip


def _name(run: StoredRun) -> str:
    return str(run.meta.get("experiment"))


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


def _split_answer(row: VerdictRow) -> tuple[str, str]:
    """(scenario, the rest of its answer) so the scenario can be set in bold."""
    text, scenario = answer(row), row.rule.scenario
    return scenario, text.removeprefix(f"{scenario}:").strip()


# ---- HTML -------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], cls: str = "",
           titles: Sequence[str] = ()) -> str:  # fmt: skip
    """An HTML table in a container that scrolls by itself (cells already escaped)."""
    tips = (list(titles) + [""] * len(header))[: len(header)]
    head = "".join(f'<th title="{escape(t)}">{h}</th>' if t else f"<th>{h}</th>"
                   for h, t in zip(header, tips, strict=True))  # fmt: skip
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}><tr>{head}</tr>{body}</table></div>'


def _headline_html(page: Page) -> str:
    header = ["Transport", *(escape(c.name) for c in page.headline)]
    rows = [[escape(str(t)), *(escape(summary.plain_value(page.table.loc[t, c.figure], c.unit))
                               for c in page.headline)] for t in page.table.index]  # fmt: skip
    titles = ["", *(c.meaning for c in page.headline)]
    return _table(header, rows, "headline", titles).replace("<div", '<div id="headline"', 1)


def _code(text: str) -> str:
    """Escaped, with `backticked` spans as code (the skip reasons name commands so)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _first_screen(page: Page) -> list[str]:
    answers = "".join(
        f"<li><b>{escape(s)}</b>: {escape(a)}</li>" for s, a in map(_split_answer, page.rows)
    )
    out = [f"<h1>{escape(TITLE)}</h1>", f"<p class=lede>{escape(LEDE)}</p>",
           f'<ul class="answers" id="answers">{answers}</ul>',
           f'<p class="size" id="size">{escape(page.size)}</p>']  # fmt: skip
    if page.skipped:
        items = "".join(f"<li><b>{escape(n)}</b>: {_code(r)} {ARROW} <code>{escape(c)}</code></li>"
                        for n, r, c in page.skipped)  # fmt: skip
        out.append(f'<div class="skipped" id="skipped"><b>Not run here</b> (this machine lacks '
                   f"what they need; the command runs each):<ul>{items}</ul></div>")  # fmt: skip
    out += ["<h2>Headline per transport</h2>", _headline_html(page)]
    return out


def _at(verdicts: tuple[Verdict, ...], setting: Setting | None) -> list[str]:
    """Under which setting each verdict was graded, in words ('' when no setting applies):
    the row names the setting, so a cell says only which side of it a grade is on."""
    if setting is None:
        return [""] * len(verdicts)
    if len(verdicts) == 1:
        return ["at the default (no fix measured for this transport)"]
    return ["at the default", "with the fix"]


def _cell_html(verdicts: tuple[Verdict, ...], setting: Setting | None) -> str:
    parts = []
    for verdict, at in zip(verdicts, _at(verdicts, setting), strict=True):
        cls = GRADE_CLASS.get(verdict.grade, "")
        said = (f"<i>{escape(at)}</i>: " if at else "") + escape(verdict.evidence)
        parts.append(f'<details class="v {cls}"><summary title="click for the evidence">'
                     f"{escape(verdict.grade)}</summary><div>{said}</div></details>")  # fmt: skip
    return f" <span class=arrow>{ARROW}</span> ".join(parts)


def _scenario_html(row: VerdictRow) -> str:
    rule = row.rule
    text = f"<b>{escape(rule.scenario)}</b><div class=rule>{escape(rule.text)}</div>"
    if rule.setting is not None:
        s = rule.setting
        text += (f"<div class=setting>Turns on <b>{escape(s.name)}</b>: "
                 f"{escape(s.default)} {ARROW} {escape(s.fixed)}</div>")  # fmt: skip
    return text


def _matrix_html(page: Page) -> list[str]:
    transports = [str(t) for t in page.table.index]
    rows = [[_scenario_html(row), *(_cell_html(row.cells.get(t, ()), row.rule.setting)
                                    for t in transports)] for row in page.rows]  # fmt: skip
    return [
        "<h2>Recommendation matrix</h2>",
        "<p>Each cell follows from the figures by the rule under its scenario; click a grade "
        "for the figures and sample sizes behind it. Where a setting decides the grade, the "
        f"cell shows it at the common default {ARROW} with the fix. "
        "<span class=undecided>undecided</span>: the run was too small to decide; "
        "<span class=na>n/a</span>: not measured.</p>",
        _table(["Scenario and rule", *map(escape, transports)], rows, "matrix")
        .replace("<th>Scenario and rule", '<th class="scenario">Scenario and rule', 1),
    ]  # fmt: skip


def _rest_html(page: Page) -> list[str]:
    if not page.rest:
        return []
    transports = [str(t) for t in page.table.index]
    rows = [[escape(c.name), *(escape(_with_n(page, t, c)) for t in transports),
             escape(c.meaning)] for c in page.rest]  # fmt: skip
    table = _table(["Figure", *map(escape, transports), "Meaning"], rows, "figures")
    return [f"<details><summary>All other figures ({len(page.rest)}), with sample sizes"
            f"</summary>{table}</details>"]  # fmt: skip


def _with_n(page: Page, transport: str, column: summary.Column) -> str:
    value = page.table.loc[transport, column.figure]
    shown = summary.plain_value(value, column.unit)
    return shown + (summary.sample(page.table, transport, column.figure) if shown != "n/a" else "")


def _charts(run: StoredRun, view: ExperimentView | None) -> list[tuple[str, Path]]:
    names = captions(view)
    return [(names.get(p.name, p.stem), p) for p in sorted(run.path.glob("*.png"))]


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(page: Page, runs: list[StoredRun], texts: Mapping[str, str],
          experiments: Mapping[str, ReportedExperiment]) -> str:  # fmt: skip
    h = [
        f"<!doctype html><meta charset=utf-8><title>pushlab report</title><style>{STYLE}</style>",
        *_first_screen(page),
        *_matrix_html(page),
        *_rest_html(page),
        "<h2>Setup</h2>",
        "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in page.setup) + "</ul>",
        _table(
            ["Experiment", "Question", "Size"], [list(map(escape, r)) for r in page.runs], "text"
        ),
    ]
    sizes = {name: size for name, _, size in page.runs}
    for run in runs:
        name = _name(run)
        view = experiments.get(name)
        question = f"<p class=question>{escape(view.question)}</p>" if view is not None else ""
        h.append(f"<h2>{escape(name)}</h2>{question}<p class=size>{escape(sizes[name])}</p>"
                 f"<p class=reading>{escape(texts[name])}</p>")  # fmt: skip
        h += [f"<h3>{escape(c)}</h3>{_img(p)}" for c, p in _charts(run, view)]
    return "\n".join(h)


# ---- Markdown ---------------------------------------------------------------------------


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell_md(verdicts: tuple[Verdict, ...]) -> str:
    return f" {ARROW} ".join(v.grade for v in verdicts)


def _matrix_md(page: Page) -> list[str]:
    transports = [str(t) for t in page.table.index]
    rows = []
    for row in page.rows:
        rule = row.rule.text
        if row.rule.setting is not None:
            s = row.rule.setting
            rule += f". Turns on {s.name}: {s.default} {ARROW} {s.fixed}"
        rows.append([_md(row.rule.scenario), *(_cell_md(row.cells.get(t, ())) for t in transports),
                     _md(rule)])  # fmt: skip
    out = ["## Recommendation matrix", "", markdown_rows(["scenario", *transports, "rule"], rows),
           "", "### Evidence", ""]  # fmt: skip
    for row in page.rows:
        out += [f"**{row.rule.scenario}**", ""]
        for transport, verdicts in row.cells.items():
            ats = _at(verdicts, row.rule.setting)
            said = "; ".join(f"{v.grade}" + (f" {at}" if at else "") + f": {v.evidence}"
                             for v, at in zip(verdicts, ats, strict=True))  # fmt: skip
            out.append(f"- {transport}: {said}")
        out.append("")
    return out


def _markdown(page: Page, runs: list[StoredRun], texts: Mapping[str, str],
              suite_dir: Path, experiments: Mapping[str, ReportedExperiment]) -> str:  # fmt: skip
    transports = [str(t) for t in page.table.index]
    md = [f"# {TITLE}", "", *(f"- **{s}**: {a}" for s, a in map(_split_answer, page.rows)), "",
          page.size, ""]  # fmt: skip
    if page.skipped:
        md += ["## Not run here", "", *(f"- {n}: {r} Run: `{c}`" for n, r, c in page.skipped), ""]
    head = [[t, *(summary.plain_value(page.table.loc[t, c.figure], c.unit) for c in page.headline)]
            for t in transports]  # fmt: skip
    md += ["## Headline per transport", "",
           markdown_rows(["transport", *(c.name for c in page.headline)], head,
                         [False] + [True] * len(page.headline)), "", *_matrix_md(page)]  # fmt: skip
    if page.rest:
        rest = [[_md(c.name), *(_with_n(page, t, c) for t in transports), _md(c.meaning)]
                for c in page.rest]  # fmt: skip
        md += ["## Other figures", "", markdown_rows(["figure", *transports, "meaning"], rest), ""]
    md += ["## Setup", "", *(f"- {s}" for s in page.setup), "",
           markdown_rows(["experiment", "question", "size"],
                         [[_md(x) for x in r] for r in page.runs]), ""]  # fmt: skip
    for run in runs:
        name = _name(run)
        md += [f"## {name}", "", texts[name], ""]
        for caption, path in _charts(run, experiments.get(name)):
            md += [f"### {caption}", "", f"![{caption}]({os.path.relpath(path, suite_dir)})", ""]
    return "\n".join(md)


def write(suite_dir: Path, runs: list[StoredRun], skipped: dict[str, str],
          experiments: Mapping[str, ReportedExperiment],
          quick: bool | None = None) -> tuple[Path, Path]:  # fmt: skip
    """Write `report.html` and `report.md` into `suite_dir`; both paths. `experiments` (name
    -> descriptor) give each run's facts, reading, charts' captions; `quick` says whether the
    suite ran at the quick size (None: not known, e.g. a report over stored runs)."""
    page = build(runs, skipped, experiments, quick)
    texts = {}
    for run in runs:
        view = experiments.get(_name(run))
        texts[_name(run)] = view.read(run, page.table) if view is not None else ""
    html_path, md_path = suite_dir / "report.html", suite_dir / "report.md"
    html_path.write_text(_html(page, runs, texts, experiments), encoding="utf-8")
    md_path.write_text(_markdown(page, runs, texts, suite_dir, experiments), encoding="utf-8")
    return html_path, md_path


__all__ = ["RULES", "Page", "build", "write"]
