"""The `auth` experiment: what a credential check costs per answer and which credential each
browser API carries. The quick run (slow: three servers, Chromium) must find what the
server's rules imply; the classification, the analysis and the matrix row are checked on
small hand-made frames (fast)."""

from __future__ import annotations

import dataclasses
import os

import pandas as pd
import pytest

import clients.browser
from analysis import auth as analysis
from analysis.matrix import FAIR, GOOD, POOR, verdict_rows
from clients.authprobe import COMPLETE, INEXPRESSIBLE, PROBES, REFUSED, outcome
from experiments import auth
from experiments.catalog import EXPERIMENTS
from tests.support import UNIT
from transports import registry

HEADER_REFUSED = {"eventsource"}  # EventSource ignores {headers}: the request goes out bare
HEADER_INEXPRESSIBLE = {"websocket"}  # the constructor's second argument is subprotocols


def page(result: str, status: int = 0, detail: str = "") -> dict[str, object]:
    return {"outcome": result, "status": status, "tokens": 0, "detail": detail}


def test_outcome_reads_the_status_wherever_the_browser_reported_it() -> None:
    assert outcome(page("complete"), [], []) == COMPLETE
    assert outcome(page("inexpressible"), [], []) == INEXPRESSIBLE
    assert outcome(page("failed", 401, "HTTP 401"), [401], []) == REFUSED  # fetch sees it
    assert outcome(page("failed", 0, "EventSource error"), [401], []) == REFUSED  # CDP saw it
    console = ["WebSocket connection to 'ws://x/ws' failed: HTTP Authentication failed; no "
               "valid credentials available"]  # fmt: skip
    assert outcome(page("failed", 0, "WebSocket closed (1006)"), [], console) == REFUSED
    assert outcome(page("failed", 0, "timed out"), [200], []) == "failed: timed out"


def cost_rows(
    transport: str, requests: float, plain: list[float], authed: list[float]
) -> list[dict[str, object]]:
    rows = []
    for r, (p, a) in enumerate(zip(plain, authed, strict=True), start=1):
        for server, cpu in (("plain", p), ("auth", a)):
            rows.append({"transport": transport, "server": server, "round": r, "answers": 4.0,
                         "requests_per_answer": requests, "connections_per_answer": 1.0,
                         "server_cpu_us_per_answer": cpu, "ttft_p50_ms": 50.0})  # fmt: skip
    return rows


def test_overhead_pairs_rounds_and_predicts_one_check_per_request() -> None:
    sse = cost_rows("sse", 1.0, [1000, 1100, 900], [1010, 1130, 905])
    shortpoll = cost_rows("shortpoll", 20.0, [2000, 2000, 2000], [2200, 2300, 2250])
    cost = pd.DataFrame(sse + shortpoll)
    table = analysis.overhead(cost, verify_us=10.0).set_index("transport")
    assert table.loc["sse", "overhead_us"] == 10.0  # median of 10, 30, 5
    assert table.loc["sse", "predicted_us"] == 10.0
    assert table.loc["sse", "checked"].startswith("per connection")
    assert table.loc["shortpoll", "overhead_us"] == 250.0
    assert table.loc["shortpoll", "predicted_us"] == 200.0
    assert table.loc["shortpoll", "checked"].startswith("per request")
    assert table.loc["shortpoll", "predicted_share"] == pytest.approx(0.1)
    assert "sse 1 check, 10 µs" in analysis.cost_reading(table.reset_index(), 10.0)


def test_a_difference_is_resolved_only_when_every_round_agrees() -> None:
    rounds = analysis.SIGN_ROUNDS
    steady = cost_rows("sse", 1.0, [1000] * rounds, [1100] * rounds)  # +100 every round
    # a larger median, but one round the other way: the noise an A/A run showed
    noisy = cost_rows("shortpoll", 20.0, [2000] * rounds, [2800] * (rounds - 1) + [1500])
    short = cost_rows("ndjson", 1.0, [1000] * (rounds - 1), [1100] * (rounds - 1))
    table = analysis.overhead(pd.DataFrame(steady + noisy + short), verify_us=10.0)
    assert table.set_index("transport")["same_sign"].to_dict() == {
        "sse": True, "shortpoll": False, "ndjson": False}  # fmt: skip
    assert analysis.cost_reading(table, 10.0).endswith("on: sse.")


def outcomes_as_the_server_must() -> pd.DataFrame:
    """The outcomes the guard's rules imply (transports/web/guard.py, docs/SECURITY.md)."""
    rows = []
    for name, (transport, api) in PROBES.items():
        forms = {"none": REFUSED, "cookie": COMPLETE, "query": COMPLETE, "query-off": REFUSED,
                 "header": REFUSED if name in HEADER_REFUSED
                 else INEXPRESSIBLE if name in HEADER_INEXPRESSIBLE else COMPLETE}  # fmt: skip
        if name == "websocket":
            forms["ticket"] = COMPLETE
        rows += [{"probe": name, "api": api, "transport": transport, "credential": c,
                  "outcome": o} for c, o in forms.items()]  # fmt: skip
    return pd.DataFrame(rows)


def test_browser_table_has_one_row_per_api_and_one_column_per_form() -> None:
    table = analysis.browser_table(outcomes_as_the_server_must())
    assert list(table["api"]) == [label for _, label in PROBES.values()]
    assert list(table.columns[1:]) == list(analysis.CREDENTIAL_LABELS.values())
    row = table.set_index("api").loc["WebSocket (/ws)"]
    assert row["Authorization header"] == INEXPRESSIBLE and row["WebSocket ticket"] == COMPLETE
    assert table.set_index("api").loc["EventSource (GET /sse)", "WebSocket ticket"] == "—"


def test_authentication_row_is_fixed_by_a_session_cookie() -> None:
    facts = pd.DataFrame.from_dict(
        analysis.browser_facts(outcomes_as_the_server_must()), orient="index"
    )
    row = next(r for r in verdict_rows(facts) if r.rule.scenario == "Authentication in browsers")
    assert [v.grade for v in row.cells["sse"]] == [FAIR, GOOD]  # EventSource, then cookie
    assert [v.grade for v in row.cells["websocket"]] == [POOR, GOOD]
    assert [v.grade for v in row.cells["longpoll"]] == [GOOD, GOOD]
    assert "session cookie" in row.rule.setting.fixed  # type: ignore[union-attr]


def test_auth_is_in_the_catalog() -> None:
    assert EXPERIMENTS["auth"] is auth.EXPERIMENT


@pytest.mark.slow
@pytest.mark.timeout(240 * UNIT)
def test_auth_quick_checks_per_request_and_browsers_carry_what_the_server_takes() -> None:
    browsers = os.access(clients.browser.CHROMIUM, os.X_OK)
    # one of each kind the cost is checked by: a request stream, an upgraded connection, a
    # poller, a QUIC session
    kinds: dict[str, str] = {}
    for t in registry.ordered():
        kind = "many" if t.requests_per_answer == "many" else t.connection
        kinds.setdefault(kind, t.key)
    spec = dataclasses.replace(auth.quick(auth.Spec()), transports=tuple(kinds.values()),
                               browsers=browsers)  # fmt: skip
    tables = auth.run(spec, run_id="test")
    assert (tables.streams["error"] == "").all() and (tables.streams["lost"] == 0).all()
    cost = tables.extra["auth_cost"]
    assert len(cost) == len(kinds) * 2 * spec.rounds  # each kind against both servers
    assert (cost["answers"] == spec.clients).all() and (cost["failed"] == 0).all()
    requests = cost.groupby("transport")["requests_per_answer"].max()
    assert requests[kinds["http"]] == 1 and requests[kinds["upgraded"]] == 1
    assert all(requests[kinds[k]] == 1 for k in kinds if k not in ("http", "upgraded", "many"))
    assert requests[kinds["many"]] > 1
    assert len(tables.extra["auth_verify"]) == 1
    assert float(tables.extra["auth_verify"]["verify_us"].iloc[0]) > 0
    if not browsers:
        pytest.skip(f"Chromium is not installed at {clients.browser.CHROMIUM}: part B not run")
    found = tables.extra["auth_browsers"].set_index(["probe", "credential"])["outcome"]
    expected = outcomes_as_the_server_must().set_index(["probe", "credential"])["outcome"]
    assert found.sort_index().to_dict() == expected.sort_index().to_dict()
