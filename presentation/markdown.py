"""The headline table and the Markdown report of one stored run.

Every number in the report is computed here from the stored tables and meta.json (through
`stats`, the same code the charts use); the prose around them holds no measured values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis import stats
from presentation import charts
from records import store

if TYPE_CHECKING:
    import pandas as pd

    from presentation.views import ExperimentView

REPORT_FILE = "report.md"
CHART_CAPTIONS: dict[str, str] = {
    "latency_cdf.png": "Token latency CDF",
    "ttft.png": "Time to first token",
    "bytes_per_token.png": "Bytes per token",
    "latency_vs_rate.png": "Token latency vs rate",
    "itl.png": "Inter-token gap",
    "requests_per_stream.png": "Requests and connections per stream",
}
LATENCY_COLUMNS = [
    "streams", "ttft_p50_ms", "ttft_p99_ms", "tokens", "latency_p50_ms", "latency_p90_ms",
    "latency_p99_ms", "latency_max_ms", "itl_gaps", "itl_p50_ms", "itl_p99_ms",
]  # fmt: skip
COST_COLUMNS = [
    "streams", "down_per_token_bytes", "overhead_ratio", "up_per_stream_bytes",
    "http_requests_per_stream", "connections_per_stream", "lost", "duplicated", "errors",
]  # fmt: skip


def headline(streams: pd.DataFrame, tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per transport (and per condition when the run has several); see module docs.

    Percentiles are numpy "linear" over streams (TTFT) or tokens (latency) or arrival gaps
    (ITL, from the tokens table); per-stream costs are medians; bytes per token and the
    overhead ratio are ratios of sums; lost, duplicated and errors are totals.
    """
    conditions = set(streams["condition"].dropna()) | set(tokens["condition"].dropna())
    by = ["transport", "condition", "rate_hz"] if len(conditions) > 1 else ["transport"]
    parts = [
        _stream_counts(streams, by),
        _renamed(stats.summarize(streams, by, "ttft_ms"), "ttft", count=None),
        _renamed(stats.summarize(tokens, by, "latency_ms"), "latency", count="tokens"),
        _renamed(
            stats.summarize(stats.token_gaps_ms(tokens, by), by, "gap_ms"), "itl", count="itl_gaps"
        ),
        stats.byte_costs(streams, by)[[*by, "down_per_token_bytes", "overhead_ratio"]],
    ]
    table = parts[0]
    for part in parts[1:]:
        table = table.merge(part, on=by, how="outer")
    for column in ("streams", "tokens", "itl_gaps", "lost", "duplicated", "errors"):
        table[column] = table[column].fillna(0).astype("int64")
    rank = {t: i for i, t in enumerate(charts.transport_order(table["transport"]))}
    table = table.sort_values(by, key=lambda s: s.map(rank) if s.name == "transport" else s)
    return table[[*by, *dict.fromkeys(LATENCY_COLUMNS + COST_COLUMNS)]].reset_index(drop=True)


def _stream_counts(streams: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    failed = streams["error"].fillna("").str.len() > 0
    return (
        streams.assign(failed=failed)
        .groupby(by, sort=True, dropna=False, observed=True)
        .agg(
            streams=("stream_id", "size"),
            up_per_stream_bytes=("bytes_up", "median"),
            http_requests_per_stream=("http_requests", "median"),
            connections_per_stream=("connections", "median"),
            lost=("lost", "sum"),
            duplicated=("duplicated", "sum"),
            errors=("failed", "sum"),
        )
        .reset_index()
    )


def _renamed(summary: pd.DataFrame, prefix: str, count: str | None) -> pd.DataFrame:
    """`<col>_p50` -> `<prefix>_p50_ms`; `count` is renamed or dropped."""
    renames: dict[str, str] = {}
    for column in summary.columns:
        for stat in ("p50", "p90", "p99", "max"):
            if column.endswith(f"_{stat}"):
                renames[column] = f"{prefix}_{stat}_ms"
    summary = summary.rename(columns=renames)
    if count is None:
        return summary.drop(columns="count")
    return summary.rename(columns={"count": count})


def format_value(value: Any) -> str:
    """A table cell: integers exactly, floats to about three significant digits, NaN as n/a."""
    import pandas as pd

    if isinstance(value, str):
        return value.replace("|", "\\|")
    if value is None or pd.isna(value):
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if number.is_integer() and abs(number) < 1e15:
            return f"{number:.0f}"
        return f"{number:.1f}" if abs(number) >= 100 else f"{number:.3g}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of `df` (numbers right-aligned), without `tabulate`."""
    numeric = [df[c].dtype.kind in "iuf" for c in df.columns]
    rows = [[format_value(v) for v in row] for row in df.itertuples(index=False)]
    return markdown_rows([str(c) for c in df.columns], rows, numeric)


def markdown_rows(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()
) -> str:
    """The one Markdown table writer: cells already formatted; `right[i]` right-aligns column
    i. (Reports, the suite page's Markdown twin and the benchmark results all use it.)"""
    align = [("---:" if i < len(right) and right[i] else "---") for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_markdown(run_dir: Path, view: ExperimentView | None = None) -> Path:
    """Write `report.md` into the run directory from its stored tables and the charts already
    drawn there; `view` (the run's experiment) adds its summary tables and chart captions."""
    run = store.load(Path(run_dir))
    table = headline(run.streams, run.tokens)
    keys = [c for c in ("transport", "condition", "rate_hz") if c in table.columns]
    summaries = view.tables(run) if view is not None else []
    sections = [
        _title(run),
        _setup(run.meta),
        "## Headline: latency\n\n" + markdown_table(table[keys + LATENCY_COLUMNS]),
        "## Headline: cost\n\n" + markdown_table(table[keys + COST_COLUMNS]),
        *(f"## {title}\n\n" + markdown_table(df) for title, df in summaries),
        _charts_section(run.path, captions(view)),
        _method(run.streams),
    ]
    path = run.path / REPORT_FILE
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def captions(view: ExperimentView | None) -> dict[str, str]:
    """Chart file name -> caption: the generic charts' and the experiment's own."""
    return {**CHART_CAPTIONS, **(dict(view.captions) if view is not None else {})}


def _title(run: store.StoredRun) -> str:
    meta = run.meta
    experiment = meta.get("experiment") or ", ".join(sorted(set(run.streams["experiment"])))
    run_id = meta.get("run_id") or run.path.name
    transports = ", ".join(charts.transport_order(run.streams["transport"].dropna()))
    return (
        f"# {experiment}: run {run_id}\n\n"
        f"Started {meta.get('started_at', 'n/a')}. {len(run.streams):,} streams and "
        f"{len(run.tokens):,} token deliveries over: {transports or 'none'}."
    )


def _setup(meta: dict[str, Any]) -> str:
    machine = meta.get("machine") or {}
    python = meta.get("python") or {}
    memory = machine.get("memory_total_bytes")
    memory_text = f"{memory / 2**30:.1f} GiB" if isinstance(memory, int) else "n/a"
    packages = meta.get("packages") or {}
    package_text = ", ".join(f"{k} {v or 'not installed'}" for k, v in packages.items())
    dirty = " (uncommitted changes)" if meta.get("git_dirty") else ""
    lines = [
        "## Setup",
        "",
        f"- Machine: {machine.get('hostname', 'n/a')}, {machine.get('cpu_count', 'n/a')} CPUs "
        f"({machine.get('cpu_model') or 'model unknown'}), {memory_text} memory",
        f"- Kernel: {machine.get('kernel', 'n/a')} ({machine.get('platform', 'n/a')})",
        f"- Python: {python.get('implementation', '')} {python.get('version', 'n/a')}".rstrip(),
        f"- pushlab {meta.get('pushlab_version', 'n/a')}, git commit "
        f"`{meta.get('git_commit', 'unknown')}`{dirty}",
        f"- Packages: {package_text or 'n/a'}",
        f"- Schema version: {meta.get('schema_version', 'n/a')}",
        "",
        "Spec:",
        "",
        "```json",
        json.dumps(meta.get("spec", {}), indent=2, default=str),
        "```",
    ]
    return "\n".join(lines)


def _charts_section(run_dir: Path, names: dict[str, str]) -> str:
    present = [(name, caption) for name, caption in names.items() if (run_dir / name).is_file()]
    if not present:
        return "## Charts\n\nNo charts drawn."
    return "## Charts\n\n" + "\n\n".join(f"### {c}\n\n![{c}]({n})" for n, c in present)


def _method(streams: pd.DataFrame) -> str:
    sources = streams["bytes_source"].fillna("unknown").value_counts()
    kernel = int(sources.get("kernel", 0))
    return (
        "## How this was measured\n\n"
        "Token latency is the client's receive wall-clock time minus the server's emit "
        "wall-clock time (`time.time_ns()` on both sides, same host, so one clock). TTFT runs "
        "from the request being sent to the first non-empty token, on a monotonic clock "
        "(`perf_counter_ns`). The inter-token gap is the difference between consecutive "
        "arrivals within a stream, from the tokens table, pooled over all streams. Bytes are "
        "TCP payload bytes per connection from the kernel's `TCP_INFO` "
        "(`tcpi_bytes_acked`/`tcpi_bytes_received`), read before each socket closes, with the "
        "application's own count as the fallback: here "
        f"{kernel:,} of {len(streams):,} streams have kernel counts. Bytes per token and the "
        "overhead ratio (bytes down / token payload bytes) are ratios of sums over streams; "
        "requests, connections and bytes up per stream are medians. Percentiles use numpy's "
        "linear interpolation and are reported with the counts they come from."
    )
