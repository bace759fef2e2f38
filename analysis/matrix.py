"""The recommendation matrix: scenario x transport, each cell derived from measured facts by a
rule written next to it (never typed by hand). A cell whose figures were not measured is
"n/a"; change the numbers and the cells change (tests feed altered facts)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

GOOD, FAIR, POOR, NA = "good", "fair", "poor", "n/a"
Facts = Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class Rule:
    scenario: str
    text: str  # the rule, as printed in the report
    needs: tuple[str, ...]  # the figures it reads (experiments/facts.py FIGURES)
    judge: Callable[[Facts], str]

    def verdict(self, facts: Facts) -> str:
        if any(
            not isinstance(facts.get(n), int | float) or math.isnan(facts[n]) for n in self.needs
        ):
            return NA
        return self.judge(facts)


def _chat_ui(f: Facts) -> str:
    if f["latency_p99_ms"] <= 50 and f["requests_per_answer"] <= 2:
        return GOOD
    return FAIR if f["latency_p99_ms"] <= 250 else POOR


def _lossy_mobile(f: Facts) -> str:
    survives = f["cut_completed"] >= 1.0 and f["cut_lost"] == 0
    if survives and f["loss_p99_ms"] <= 300 and f["cut_recovery_ms"] <= 500:
        return GOOD
    return FAIR if survives else POOR


def _proxies(f: Facts) -> str:
    if f["idle_timeout_ok"] >= 1.0 and f["proxy_min_spread"] >= 0.8:
        return GOOD
    return FAIR if f["idle_timeout_ok"] >= 1.0 else POOR


def _idle_subscribers(f: Facts) -> str:
    if f["idle_conn_kib"] <= 20 and f["capacity_n"] >= 1000:
        return GOOD
    return FAIR if f["idle_conn_kib"] <= 40 and f["capacity_n"] >= 100 else POOR


def _control(f: Facts) -> str:
    if f["cancel_wasted"] <= 2 and f["cancel_extra_requests"] == 0:
        return GOOD
    return FAIR if f["cancel_wasted"] <= 2 else POOR


def _relay(f: Facts) -> str:
    if f["relay_added_p50_ms"] <= 5 and f["requests_per_answer"] <= 2:
        return GOOD
    return FAIR if f["relay_added_p50_ms"] <= 50 else POOR


RULES: tuple[Rule, ...] = (
    Rule("Chat UI in browsers",
         "good: token p99 <= 50 ms and <= 2 requests per answer; fair: p99 <= 250 ms; else poor",
         ("latency_p99_ms", "requests_per_answer"), _chat_ui),
    Rule("Mobile on lossy networks",
         "good: every stream completes through repeated cuts with 0 lost, p99 under the "
         "highest loss <= 300 ms and recovery <= 500 ms; fair: completes with 0 lost; else poor",
         ("cut_completed", "cut_lost", "loss_p99_ms", "cut_recovery_ms"), _lossy_mobile),
    Rule("Behind corporate proxies",
         "good: survives a 1 s proxy read timeout (with keep-alives) and still streams in every "
         "nginx mode (arrival spread >= 0.8); fair: survives but some mode buffers; else poor",
         ("idle_timeout_ok", "proxy_min_spread"), _proxies),
    Rule("Thousands of idle subscribers",
         "good: <= 20 KiB server memory per idle connection and capacity >= 1000 streams; "
         "fair: <= 40 KiB and >= 100; else poor",
         ("idle_conn_kib", "capacity_n"), _idle_subscribers),
    Rule("Bidirectional control (cancel)",
         "good: an explicit cancel stops generation within 2 tokens without another request; "
         "fair: within 2 tokens with one; else poor",
         ("cancel_wasted", "cancel_extra_requests"), _control),
    Rule("Server-to-server relay",
         "good: adds <= 5 ms (p50) to a model's stream in <= 2 requests; fair: <= 50 ms; else poor",
         ("relay_added_p50_ms", "requests_per_answer"), _relay),
)  # fmt: skip


def matrix(facts: pd.DataFrame, rules: tuple[Rule, ...] = RULES) -> pd.DataFrame:
    """Scenario rows x transport columns of verdicts, plus a `rule` column."""
    import pandas as pd

    rows = []
    for rule in rules:
        row: dict[str, str] = {"scenario": rule.scenario}
        for transport, values in facts.iterrows():
            row[str(transport)] = rule.verdict(values.to_dict())
        row["rule"] = rule.text
        rows.append(row)
    return pd.DataFrame(rows)
