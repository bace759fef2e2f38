"""The recommendation matrix: scenario x transport, each cell derived from measured facts by a
rule written next to it (never typed by hand), and carrying its evidence.

Theory of operation. A `Rule` reads named figures from one transport's facts (a row of
`analysis.facts.collect`) and grades them. A cell is a `Verdict`: the grade, the figures it
read with their sample sizes (the `n:<figure>` columns the experiments contribute), and the
setting it was graded under. Three things keep a cell honest:

- **n/a**: a figure the rule needs was not measured (its experiment did not run or skipped).
- **undecided**: the figures exist but the run was too small to decide the rule (e.g. the
  scale run stopped at 200 streams and the rule asks for 1,000): `Rule.decidable` says why,
  and the cell says it instead of grading.
- **settings**: where a grade turns on a setting a reader can change (SSE's `retry:`, nginx's
  `proxy_http_version`, heartbeats under a proxy's read timeout), the rule names the
  `Setting`, and the cell holds two verdicts: at the common default, and with the fix
  (figures measured with it, `<figure>@fixed`). A reader learns what to configure, not only
  what to pick.

`matrix(facts)` is the grade grid the tests alter numbers in; `verdict_rows(facts)` is what
the report draws, cell by cell, with `answer(row)` the paragraph a scenario opens with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

GOOD, FAIR, POOR, NA, UNDECIDED = "good", "fair", "poor", "n/a", "undecided"
GRADES = (GOOD, FAIR, POOR, UNDECIDED, NA)  # in the order an answer lists them
Facts = Mapping[str, float]
FIXED = "@fixed"  # suffix of a figure measured with a setting's fix


def count_of(figure: str) -> str:
    """The column holding the sample size behind `figure` (NaN or absent: not reported)."""
    return f"n:{figure}"


def _measured(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A setting a verdict turns on: its default and the fix the experiment also measured."""

    name: str  # e.g. "SSE's reconnection delay"
    default: str  # e.g. "retry: 1000 ms (pushlab's default)"
    fixed: str  # e.g. "retry: 100 ms"
    applies_to: tuple[str, ...] = ()  # figures whose value the setting changes


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One cell: a grade, the evidence behind it, and the setting it was graded under."""

    grade: str
    evidence: str  # figures with units and sample sizes, or why there is no grade
    setting: str = ""  # "" when no setting of the rule applies

    def __str__(self) -> str:
        return self.grade if not self.setting else f"{self.grade} ({self.setting})"


@dataclasses.dataclass(frozen=True)
class Figure:
    """How a figure is shown as evidence: a short label, its unit, its sample's unit."""

    label: str
    unit: str = ""
    sample: str = ""  # what `n:<figure>` counts: "tokens", "streams", ...


# Labels of the figures the rules read (the figures' full meanings are in their experiments).
FIGURES: dict[str, Figure] = {
    "latency_p99_ms": Figure("token p99", "ms", "tokens"),
    "requests_per_answer": Figure("requests per answer", "", "streams"),
    "cut_completed": Figure("completed through cuts", "frac", "streams"),
    "cut_lost": Figure("tokens lost", "", "streams"),
    "cut_recovery_ms": Figure("longest recovery", "ms", "cuts"),
    "loss_p99_ms": Figure("p99 at the highest loss", "ms", "tokens"),
    "idle_timeout_ok": Figure("completed behind a 1 s read timeout", "frac", "streams"),
    "proxy_min_spread": Figure("worst arrival spread behind nginx", "", "streams"),
    "idle_conn_kib": Figure("memory per idle connection", "KiB", "connections"),
    "capacity_n": Figure("capacity at the p99 target", "streams", ""),
    "capacity_tried_n": Figure("largest N tried", "streams", ""),
    "cancel_wasted": Figure("tokens after a cancel", "", "streams"),
    "cancel_extra_requests": Figure("extra requests to cancel", "", ""),
    "relay_added_p50_ms": Figure("latency added to a model's stream, p50", "ms", "tokens"),
    "tab_stalled": Figure("streams of one tab that waited", "frac", "streams"),
    "tls_bytes_per_token": Figure("TLS record bytes per token", "B", "tokens"),
    "tls_conns_per_answer": Figure("TLS handshakes per answer", "", "streams"),
    "tls_handshake_ms": Figure("handshake", "ms", "streams"),
    "tls_ttft_added_ms": Figure("first token later by", "ms", "streams"),
    "failover_harm": Figure("lost + duplicated (+1 per failed stream), node killed", "", "streams"),
    "failover_sticky_harm": Figure("the same with sticky routing", "", "streams"),
    "failover_recovery_ms": Figure("recovery p99", "ms", "streams"),
    "failover_retry_ms": Figure("own retry delay", "ms", ""),
    "browser_auth_ok": Figure(
        "browser clients that completed with the credential", "frac", "clients"
    ),
}


def _value(value: float, unit: str) -> str:
    if unit == "frac":
        return f"{value:.0%}"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}" if unit and unit not in ("streams",) else text


def evidence(facts: Facts, figures: tuple[str, ...]) -> str:
    """'token p99 2.26 ms (n=10 tokens); requests per answer 1 (n=1 streams)' for one cell."""
    parts = []
    for name in figures:
        value = facts.get(name)
        shown = FIGURES.get(name, Figure(name))
        if not _measured(value):
            parts.append(f"{shown.label}: not measured")
            continue
        text = f"{shown.label} {_value(float(value), shown.unit)}"  # type: ignore[arg-type]
        count = facts.get(count_of(name))
        if _measured(count) and shown.sample:
            text += f" (n={int(count)} {shown.sample})"  # type: ignore[arg-type]
        parts.append(text)
    return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Rule:
    scenario: str
    text: str  # the rule, as printed in the report
    needs: tuple[str, ...]  # the figures it reads
    judge: Callable[[Facts], str]
    # why these figures cannot decide the rule (a too-small run), or None when they can
    decidable: Callable[[Facts], str | None] = lambda f: None
    setting: Setting | None = None
    shows: tuple[str, ...] = ()  # extra figures cited as evidence (besides `needs`)
    # a sentence the scenario's answer ends with, computed from every transport's facts
    remark: Callable[[Mapping[str, Facts]], str] | None = None

    def verdict(self, facts: Facts) -> str:
        """The grade at the default setting (what `matrix` shows)."""
        return self.verdicts(facts)[0].grade

    def verdicts(self, facts: Facts) -> tuple[Verdict, ...]:
        """At the default setting; then, when the rule has a setting whose fix was measured,
        with the fix."""
        first = self._grade(facts, self.setting.default if self.setting else "")
        if self.setting is None:
            return (first,)
        fixed = dict(facts)
        changed = False
        for name in self.setting.applies_to:
            value = facts.get(name + FIXED)
            if _measured(value):
                fixed[name] = value  # type: ignore[assignment]
                fixed[count_of(name)] = facts.get(count_of(name + FIXED), math.nan)
                changed = True
        if not changed:
            return (first,)
        return first, self._grade(fixed, self.setting.fixed)

    def _grade(self, facts: Facts, setting: str) -> Verdict:
        cited = tuple(dict.fromkeys(self.needs + self.shows))
        missing = [n for n in self.needs if not _measured(facts.get(n))]
        if missing:
            labels = ", ".join(FIGURES.get(n, Figure(n)).label for n in missing)
            return Verdict(NA, f"not measured: {labels}", setting)
        why = self.decidable(facts)
        if why:
            return Verdict(UNDECIDED, f"{why} ({evidence(facts, cited)})", setting)
        return Verdict(self.judge(facts), evidence(facts, cited), setting)


def _chat_ui(f: Facts) -> str:
    if f["latency_p99_ms"] <= 50 and f["requests_per_answer"] <= 2:
        return GOOD
    return FAIR if f["latency_p99_ms"] <= 250 else POOR


def _lossy_mobile_decidable(f: Facts) -> str | None:
    """A stream that did not survive the cuts is poor whatever else was measured; one that did
    needs the loss and recovery figures to tell good from fair."""
    if f["cut_completed"] < 1.0 or f["cut_lost"] > 0:
        return None
    missing = [n for n in ("loss_p99_ms", "cut_recovery_ms") if not _measured(f.get(n))]
    return f"survived the cuts, but not measured: {', '.join(missing)}" if missing else None


def _lossy_mobile(f: Facts) -> str:
    survives = f["cut_completed"] >= 1.0 and f["cut_lost"] == 0
    if not survives:
        return POOR
    if f["loss_p99_ms"] <= 300 and f["cut_recovery_ms"] <= 500:
        return GOOD
    return FAIR


def _proxies(f: Facts) -> str:
    if f["idle_timeout_ok"] >= 1.0 and f["proxy_min_spread"] >= 0.8:
        return GOOD
    return FAIR if f["idle_timeout_ok"] >= 1.0 else POOR


def _idle_subscribers(f: Facts) -> str:
    if f["idle_conn_kib"] <= 20 and f["capacity_n"] >= 1000:
        return GOOD
    return FAIR if f["idle_conn_kib"] <= 40 and f["capacity_n"] >= 100 else POOR


def _idle_decidable(f: Facts) -> str | None:
    """Capacity counts only where the run went far enough to find it: a transport that met the
    target at every N tried has a capacity of at least that N, not that N."""
    tried = f.get("capacity_tried_n")
    if _measured(tried) and f["capacity_n"] >= tried and tried < 1000:  # type: ignore[operator]
        return f"ran to {int(tried)} streams, the rule needs 1,000"  # type: ignore[arg-type]
    return None


def _control(f: Facts) -> str:
    if f["cancel_wasted"] <= 2 and f["cancel_extra_requests"] == 0:
        return GOOD
    return FAIR if f["cancel_wasted"] <= 2 else POOR


def _tab(f: Facts) -> str:
    if f["tab_stalled"] == 0:
        return GOOD
    return FAIR if f["tab_stalled"] <= 0.25 else POOR


def _tls(f: Facts) -> str:
    if f["tls_bytes_per_token"] <= 30 and f["tls_conns_per_answer"] <= 1:
        return GOOD
    return FAIR if f["tls_bytes_per_token"] <= 60 else POOR


def _relay(f: Facts) -> str:
    if f["relay_added_p50_ms"] <= 5 and f["requests_per_answer"] <= 2:
        return GOOD
    return FAIR if f["relay_added_p50_ms"] <= 50 else POOR


def _node_death(f: Facts) -> str:
    if f["failover_harm"] == 0:
        fast = f["failover_recovery_ms"] <= 1000 + f["failover_retry_ms"]
        return GOOD if fast else FAIR
    return FAIR if f.get("failover_sticky_harm") == 0 else POOR


def _browser_auth(f: Facts) -> str:
    if f["browser_auth_ok"] >= 1.0:
        return GOOD
    return FAIR if f["browser_auth_ok"] > 0 else POOR


def _node_death_decidable(f: Facts) -> str | None:
    """A harmed stream is graded without its recovery; a clean one needs it."""
    if f["failover_harm"] > 0 or _measured(f.get("failover_recovery_ms")):
        return None
    return "no token loss, but recovery not measured"


def _node_death_remark(cells: Mapping[str, Facts]) -> str:
    """Which transports need sticky routing with the Redis log, what the in-memory log lost."""
    sticky = [t for t, f in cells.items() if f.get("failover_harm" + FIXED, 0) > 0
              and f.get("failover_sticky_harm" + FIXED) == 0]  # fmt: skip
    lost = {t: float(f["failover_lost"]) for t, f in cells.items()
            if _measured(f.get("failover_lost"))}  # fmt: skip
    text = f" Needs sticky routing with the Redis log: {', '.join(sticky)}." if sticky else ""
    if lost:
        text += " Each node's in-memory hub lost " + ", ".join(
            f"{t} {v:.0f}" for t, v in lost.items()
        )
        text += " tokens."
    return text


SHARED_LOG = Setting(
    "the stream log", "each node's own in-memory hub", "the shared Redis log",
    applies_to=("failover_harm", "failover_sticky_harm", "failover_recovery_ms"),
)  # fmt: skip
SSE_RETRY = Setting(
    "SSE's reconnection delay", "retry: 1000 ms (pushlab's default)", "retry: 100 ms",
    applies_to=("cut_recovery_ms", "cut_completed", "cut_lost"),
)  # fmt: skip
PROXY_SETTINGS = Setting(
    "the proxy's settings and the app's heartbeats",
    "nginx defaults (proxy_http_version 1.0, proxy_buffering on, no X-Accel-Buffering) and no "
    "heartbeat within proxy_read_timeout",
    "proxy_http_version 1.1 or the app's X-Accel-Buffering: no, and heartbeats shorter than "
    "proxy_read_timeout",
    applies_to=("proxy_min_spread", "idle_timeout_ok"),
)
HTTP_VERSION = Setting(
    "the HTTP version the browser gets",
    "HTTP/1.1 (clear text, or TLS without h2): six connections per origin",
    "HTTP/2 through a TLS front (nginx or Caddy): streams share one connection",
    applies_to=("tab_stalled",),
)
BROWSER_CREDENTIAL = Setting(
    "the credential the page carries",
    "an Authorization header (what API clients send)",
    "a session cookie (POST /auth/session first)",
    applies_to=("browser_auth_ok",),
)

RULES: tuple[Rule, ...] = (
    Rule("Chat UI in browsers",
         "good: token p99 <= 50 ms and <= 2 requests per answer; fair: p99 <= 250 ms; else poor",
         ("latency_p99_ms", "requests_per_answer"), _chat_ui),
    Rule("Mobile on lossy networks",
         "good: every stream completes through repeated cuts with 0 lost, p99 under the "
         "highest loss <= 300 ms and recovery <= 500 ms; fair: completes with 0 lost; else poor",
         ("cut_completed", "cut_lost"), _lossy_mobile, decidable=_lossy_mobile_decidable,
         setting=SSE_RETRY, shows=("loss_p99_ms", "cut_recovery_ms")),
    Rule("Behind corporate proxies",
         "good: completes behind a 1 s proxy read timeout and still streams behind nginx "
         "(arrival spread >= 0.8); fair: completes but nginx holds the stream; else poor",
         ("idle_timeout_ok", "proxy_min_spread"), _proxies, setting=PROXY_SETTINGS),
    Rule("Thousands of idle subscribers",
         "good: <= 20 KiB server memory per idle connection and capacity >= 1000 streams; "
         "fair: <= 40 KiB and >= 100; else poor; undecided if the run stopped short of 1000",
         ("idle_conn_kib", "capacity_n"), _idle_subscribers, decidable=_idle_decidable,
         shows=("capacity_tried_n",)),
    Rule("Bidirectional control (cancel)",
         "good: an explicit cancel stops generation within 2 tokens without another request; "
         "fair: within 2 tokens with one; else poor",
         ("cancel_wasted", "cancel_extra_requests"), _control),
    Rule("Many streams in one browser tab",
         "good: no stream waits for a connection when a tab opens more than six; fair: at "
         "most a quarter wait; else poor",
         ("tab_stalled",), _tab, setting=HTTP_VERSION),
    Rule("Production behind TLS",
         "good: <= 30 bytes of TLS records per token and one handshake per answer; fair: "
         "<= 60 bytes per token; else poor",
         ("tls_bytes_per_token", "tls_conns_per_answer"), _tls,
         shows=("tls_handshake_ms", "tls_ttft_added_ms")),
    Rule("Server-to-server relay",
         "good: adds <= 5 ms (p50) to a model's stream in <= 2 requests; fair: <= 50 ms; else poor",
         ("relay_added_p50_ms", "requests_per_answer"), _relay),
    Rule("Survives the death of a node",
         "good: a node SIGKILLed mid-answer costs 0 lost, 0 duplicated tokens and recovery p99 "
         "<= 1 s + the transport's own retry delay; fair: 0 lost and 0 duplicated but slower, "
         "or only with sticky routing; else poor",
         ("failover_harm", "failover_retry_ms"), _node_death, decidable=_node_death_decidable,
         setting=SHARED_LOG, shows=("failover_recovery_ms", "failover_sticky_harm"),
         remark=_node_death_remark),
    Rule("Authentication in browsers",
         "good: every browser client of the transport completes a stream carrying the "
         "credential (Chromium, against a server with --auth); fair: some do; else poor",
         ("browser_auth_ok",), _browser_auth, setting=BROWSER_CREDENTIAL),
)  # fmt: skip


def matrix(facts: pd.DataFrame, rules: tuple[Rule, ...] = RULES) -> pd.DataFrame:
    """Scenario rows x transport columns of grades at the default setting, plus `rule`."""
    import pandas as pd

    rows = []
    for rule in rules:
        row: dict[str, str] = {"scenario": rule.scenario}
        for transport, values in facts.iterrows():
            row[str(transport)] = rule.verdict(values.to_dict())
        row["rule"] = rule.text
        rows.append(row)
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class VerdictRow:
    """One scenario: its rule and, per transport (facts order), the cell's verdicts."""

    rule: Rule
    cells: dict[str, tuple[Verdict, ...]]
    remark: str = ""  # the rule's remark on this run's facts ("" without one)

    def final(self, transport: str) -> Verdict:
        """The verdict a reader can reach: with the fix where one was measured."""
        return self.cells[transport][-1]


def verdict_rows(facts: pd.DataFrame, rules: tuple[Rule, ...] = RULES) -> list[VerdictRow]:
    """Every rule's verdicts for every transport, with their evidence."""
    by_transport = {str(t): v.to_dict() for t, v in facts.iterrows()}
    return [
        VerdictRow(
            rule,
            {t: rule.verdicts(f) for t, f in by_transport.items()},
            rule.remark(by_transport) if rule.remark else "",
        )
        for rule in rules
    ]


def answer(row: VerdictRow) -> str:
    """The scenario's answer in a sentence or two, computed from its cells.

    Lists the transports by grade (with the fix where the rule has a setting and it changed a
    grade), then names the setting that changed grades, or says that none could be graded."""
    by_grade: dict[str, list[str]] = {}
    for transport in row.cells:
        by_grade.setdefault(row.final(transport).grade, []).append(transport)
    graded = [g for g in (GOOD, FAIR, POOR) if by_grade.get(g)]
    scenario = row.rule.scenario
    if not graded:
        reason = "undecided" if by_grade.get(UNDECIDED) else "not measured"
        return f"{scenario}: no transport could be graded ({reason} in this run)."
    text = f"{scenario}: " + "; ".join(f"{g}: {', '.join(by_grade[g])}" for g in graded) + "."
    changed = {t: c for t, c in row.cells.items() if len(c) > 1 and c[0].grade != c[1].grade}
    if changed and row.rule.setting is not None:
        setting = row.rule.setting
        moves = ", ".join(f"{t} {c[0].grade} → {c[1].grade}" for t, c in changed.items())
        text += f" With {setting.fixed} instead of {setting.default}: {moves}."
    rest = [g for g in (UNDECIDED, NA) if by_grade.get(g)]
    for grade in rest:
        text += f" {grade.capitalize()}: {', '.join(by_grade[grade])}."
    return text + row.remark
