"""What the suite report's first screen says, as data both pages draw (`html.py` renders it
as HTML and Markdown): the run's size and conditions read from the stored specs, what was
skipped with the command that would run it, and the figures under plain names with units
(at most eight in the headline, the rest for a details table).

Nothing here is measured or typed by hand: sizes come from each run's `meta.json` spec,
figures from `analysis.facts.collect`, units and meanings from the experiments' declarations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

# figure -> plain name with its unit: the one place a figure's column name is chosen. A figure
# not listed is shown as "<name> (<unit>)", so a new experiment's figure is never dropped.
PLAIN: dict[str, str] = {
    "ttft_p50_ms": "First token p50 (ms)",
    "ttft_p99_ms": "First token p99 (ms)",
    "latency_p50_ms": "Token latency p50 (ms)",
    "latency_p99_ms": "Token latency p99 (ms)",
    "bytes_per_token": "Bytes per token",
    "overhead_ratio": "Wire bytes per text byte",
    "requests_per_answer": "Requests per answer",
    "connections_per_answer": "Connections per answer",
    "cut_completed": "Survives cuts (% streams)",
    "cut_lost": "Tokens lost to cuts",
    "cut_recovery_ms": "Recovery after a cut (ms)",
    "cancel_wasted": "Tokens after a cancel",
    "cancel_extra_requests": "Extra requests to cancel",
    "leave_wasted": "Tokens after the client left",
    "proxy_min_spread": "Streams through nginx (1 = yes, 0 = one burst)",
    "idle_timeout_ok": "Survives a 1 s proxy timeout (% streams)",
    "loss_p99_ms": "Token p99 at the highest loss (ms)",
    "capacity_n": "Capacity at the p99 target (streams)",
    "capacity_tried_n": "Largest N tried (streams)",
    "idle_conn_kib": "Idle memory (KiB/conn)",
    "relay_added_p50_ms": "Latency a relay adds, p50 (ms)",
    "continuation_ms": "Follow-up request (ms)",
}
# The headline: what an architect compares first (the matrix and the details hold the rest).
HEADLINE: tuple[str, ...] = (
    "ttft_p50_ms", "latency_p99_ms", "bytes_per_token", "requests_per_answer",
    "cut_completed", "cut_recovery_ms", "leave_wasted", "idle_conn_kib",
)  # fmt: skip
MAX_HEADLINE = 8  # columns besides the transport: what fits 1280 px without scrolling

# How each sweep a spec may hold reads in the size sentence: spec key -> (phrase, reduce).
# `{v}` is the reduced value; the key names come from the specs, never the values.
CONDITIONS: tuple[tuple[str, str, str], ...] = (
    ("rtts_ms", "added round trip up to {v} ms", "max"),
    ("losses_pct", "packet loss up to {v}%", "max"),
    ("cut_every_tokens", "a connection cut every {v} tokens", "min"),
    ("ns", "up to {v} concurrent streams", "max"),
    ("read_timeout_s", "a proxy read timeout of {v} s", "min"),
    ("modes", "nginx modes {v}", "all"),
)
RUN_COMMAND = ".venv/bin/pushlab run {name}"
SYSTEM_COMMAND = "sudo make system"  # installs what a skipped experiment lacked (Debian)


def plain_name(figure: str, unit: str = "") -> str:
    """The column name a reader sees for `figure`."""
    if figure in PLAIN:
        return PLAIN[figure]
    return f"{figure} ({unit})" if unit and unit != "frac" else figure


def plain_value(value: object, unit: str = "") -> str:
    """A figure for a reader: fractions as percentages, thousands separated, 3 significant
    digits below 100, 'n/a' when not measured."""
    if not isinstance(value, int | float) or math.isnan(value):
        return "n/a"
    if unit == "frac":
        return f"{value:.0%}"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclasses.dataclass(frozen=True)
class Column:
    """A figure as a table column: its name in the facts, plain name, unit and meaning."""

    figure: str
    name: str
    unit: str
    meaning: str


def columns(table: pd.DataFrame, figures: Mapping[str, tuple[str, str]]) -> list[Column]:
    """Every measured figure (declared order; not the evidence columns `n:`/`@fixed`)."""
    measured = [f for f in figures if f in table.columns and table[f].notna().any()]
    return [Column(f, plain_name(f, figures[f][0]), *figures[f]) for f in measured]


def split(cols: Sequence[Column]) -> tuple[list[Column], list[Column]]:
    """(headline, the rest): the headline in HEADLINE's order, at most MAX_HEADLINE."""
    by_figure = {c.figure: c for c in cols}
    head = [by_figure[f] for f in HEADLINE if f in by_figure][:MAX_HEADLINE]
    return head, [c for c in cols if c not in head]


def sample(table: pd.DataFrame, transport: str, figure: str) -> str:
    """' (n=10)' when the facts carry the figure's sample size for this transport, else ''."""
    column = f"n:{figure}"
    if column not in table.columns:
        return ""
    count = table.loc[transport, column]
    return f" (n={int(count):,})" if isinstance(count, int | float) and count == count else ""


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


def _span(values: Iterable[float], unit: str = "") -> str:
    """'10', '2-100' (en dash) with an optional unit; '' when there are none."""
    numbers = sorted({float(v) for v in values if isinstance(v, int | float)})
    if not numbers:
        return ""
    low, high = _number(numbers[0]), _number(numbers[-1])
    text = low if low == high else f"{low}\u2013{high}"
    return f"{text} {unit}".rstrip()


def _values(spec: Mapping[str, Any], *keys: str) -> list[float]:
    out: list[float] = []
    for key in keys:
        value = spec.get(key)
        items = value if isinstance(value, list | tuple) else [value]
        out += [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    return out


def load(specs: Mapping[str, Mapping[str, Any]]) -> str:
    """'1 stream x 2–100 tokens per transport at 0.5–150 tokens/s, 7 transports' over specs."""
    clients = [v for s in specs.values() for v in _values(s, "clients")]
    tokens = [v for s in specs.values() for v in _values(s, "tokens")]
    rates = [v for s in specs.values() for v in _values(s, "rate", "rates_hz")]
    transports = {t for s in specs.values() for t in s.get("transports") or ()}
    parts = []
    if clients:
        parts.append(_span(clients, "stream" if max(clients) == 1 else "streams"))
    if tokens:
        parts.append(_span(tokens, "tokens"))
    text = " x ".join(parts) + (" per transport" if parts else "")
    if rates:
        text += f" at {_span(rates, 'tokens/s')}"
    if transports:
        plural = "" if len(transports) == 1 else "s"
        text += f"{', ' if text else ''}{len(transports)} transport{plural}"
    return text


def conditions(specs: Mapping[str, Mapping[str, Any]], attribute: bool = True) -> list[str]:
    """Each sweep the specs hold, phrased, with the experiments it comes from (`attribute`)."""
    out = []
    for key, phrase, reduce in CONDITIONS:
        having = {name: spec[key] for name, spec in specs.items() if spec.get(key) is not None}
        if not having:
            continue
        if reduce == "all":
            items = dict.fromkeys(str(v) for value in having.values() for v in value)
            shown = ", ".join(items)
        else:
            numbers = [v for name in having for v in _values(specs[name], key)]
            if not numbers:
                continue
            shown = _number(max(numbers) if reduce == "max" else min(numbers))
        source = f" ({', '.join(having)})" if attribute else ""
        out.append(phrase.format(v=shown) + source)
    return out


def run_size(spec: Mapping[str, Any]) -> str:
    """One run's size and conditions: '1 stream x 10 tokens per transport ...; ...'."""
    parts = [load({"": spec}), *conditions({"": spec}, attribute=False)]
    return "; ".join(p for p in parts if p) or "n/a"


def size_sentence(specs: Mapping[str, Mapping[str, Any]], quick: bool | None = None) -> str:
    """The run's size and conditions in one sentence, from the stored runs' specs (name ->
    spec); `quick` names the size when the suite knows it."""
    if not specs:
        return "No experiment was run."
    label = {True: "Quick size", False: "Full size", None: "Size"}[quick]
    text = f"{label}: {load(specs) or 'see each section'}"
    extra = conditions(specs)
    return text + (f"; {'; '.join(extra)}." if extra else ".")


def run_command(name: str, quick: bool | None = None) -> str:
    """The one command that runs a skipped experiment once the machine has what it lacked."""
    command = RUN_COMMAND.format(name=name) + ("" if quick is False else " --quick")
    return f"{SYSTEM_COMMAND} && {command}"


def skipped_lines(
    skipped: Mapping[str, str], quick: bool | None = None
) -> list[tuple[str, str, str]]:
    """(experiment, why it was skipped, the command that would run it), in the suite's order."""
    return [(name, reason.strip(), run_command(name, quick)) for name, reason in skipped.items()]


def harness_sentence(runs: Iterable[StoredRun]) -> str:
    """What the measuring side was doing, from the stored runs: the server's collector policy
    where an experiment set one, and whether a load-generator process was saturated (then the
    harness, not the transport, set that point's numbers)."""
    policies: dict[str, list[str]] = {}
    saturated: list[str] = []
    busiest = 0.0
    for run in runs:
        name = str(run.meta.get("experiment"))
        spec = run.meta.get("spec") or {}
        if spec.get("server_gc"):
            policies.setdefault(str(spec["server_gc"]), []).append(name)
        for table in run.extra.values():
            if "fleet_saturated" in table:
                saturated += [name] if bool(table["fleet_saturated"].any()) else []
                busiest = max(busiest, float(table["fleet_cpu_max_fraction"].max()))
    parts = [f"server collector {gc} ({', '.join(names)})" for gc, names in policies.items()]
    if parts:
        parts.append("CPython's default elsewhere")
    if saturated:
        parts.append(f"a load-generator process was saturated in: {', '.join(saturated)}")
    elif busiest:
        parts.append(f"no load-generator process was saturated (busiest {busiest:.0%} of a core)")
    return ("Harness: " + "; ".join(parts) + ".") if parts else ""
