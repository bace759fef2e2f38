"""Smoke tests of the benchmark suite (benchmarks/): it runs, stores what it should, and its
bare references speak pushlab's wire format. Behaviour only: no timing or ratio is asserted
here (the speed targets live in benchmarks/README.md, measured by benchmarks/run.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from clients.fleet import FleetPool, FleetSpec, run_fleet
from clients.recorder import stream_row
from streams.params import GenParams

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package: `pytest` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import report, run, suite, summary  # noqa: E402
from benchmarks.procs import Server, running  # noqa: E402
from benchmarks.trials import light_delivery  # noqa: E402


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_run_stores_a_complete_result(tmp_path: Path) -> None:
    out, readme = tmp_path / "result.json", tmp_path / "README.md"
    argv = ["--quick", "--only", "raw_ceiling", "--out", str(out), "--readme", str(readme)]
    assert run.main(argv) == 0

    doc = json.loads(out.read_text())
    assert set(doc) == {"meta", "targets", "details", "trials"}
    meta = doc["meta"]
    assert meta["schema"] == run.SCHEMA
    assert meta["command"] == "python benchmarks/run.py " + " ".join(argv)
    assert meta["machine"]["cpu_count"] >= 1 and meta["python"]
    assert meta["packages"]["aiohttp"] and len(meta["code_sha256"]) == 64
    assert {(t["side"], t["transport"]) for t in doc["trials"]} == {("raw", "sse"), ("bare", "sse")}
    for trial in doc["trials"]:
        assert trial["benchmark"] == "raw_ceiling" and trial["tokens_lost"] == 0
        for key in ("tokens_per_s", "cpu_per_token_us", "bytes_down_per_token", "wall_s"):
            assert _positive(trial[key]), (key, trial[key])
    (row,) = doc["targets"]
    assert row["target"] == "context" and row["met"] is None
    for key in ("value", "reference", "ratio"):
        assert _positive(row[key]["value"]) and row[key]["n"] == 1
    text = readme.read_text()
    assert meta["command"] in text and "| # | target |" in text


@pytest.fixture(scope="module")
def bare() -> Iterator[Server]:
    with running(["bare"]) as servers:
        yield servers["bare"]


@pytest.mark.parametrize("transport", ["sse", "websocket", "ndjson", "longpoll"])
async def test_bare_reference_speaks_pushlabs_wire_format(bare: Server, transport: str) -> None:
    params = GenParams(tokens=5, rate=200.0, ttft_ms=0.0)
    records = await run_fleet(FleetSpec(transport, 2), bare.target, params)
    for rec in records:
        row = stream_row(rec)
        assert (row["error"], row["tokens_received"], row["lost"]) == ("", 5, 0)
        assert row["end_reason"] == "done" and rec.stream_id


def test_light_readers_see_every_token(bare: Server) -> None:
    params = GenParams(tokens=5, rate=200.0, ttft_ms=0.0)
    with FleetPool(2) as pool:
        for transport in ("sse", "websocket"):
            spec = FleetSpec(transport, 3, stagger_ms=1.0, workers=2, uvloop=True)
            records, stats = pool.run_light(spec, bare.target, params)
            result = light_delivery(records, params)
            assert (result["streams"], result["tokens_lost"], result["stream_errors"]) == (3, 0, 0)
            assert result["delivered_pct"] == 100.0 and len(stats) == 2


def test_a_missed_ratio_target_says_by_how_much() -> None:
    goal = summary.GOALS[0]  # ratio <= 1.25
    trials = [
        {"benchmark": goal.benchmark, "side": side, "transport": "sse", "gc": "auto", "rep": 0,
         goal.metric: value}
        for side, value in (("pushlab", 30.0), ("bare", 20.0))
    ]  # fmt: skip
    row = summary.evaluate(goal, trials, "sse", "auto")
    assert row["ratio"]["value"] == 1.5 and row["met"] is False
    assert row["miss"] == "0.25x over (20%)"


def test_a_target_met_by_the_median_still_names_the_repetition_that_missed() -> None:
    goal = next(g for g in summary.GOALS if g.target == "13a")  # ratio <= 1.5, with `explain`
    trials = [
        {"benchmark": goal.benchmark, "side": side, "transport": "sse", "gc": "auto", "rep": rep,
         goal.metric: value, "redis_cores": 0.1 if side == goal.side else math.nan}
        for side, values in ((goal.side, (90.0, 100.0, 120.0)), (goal.reference, (70.0,) * 3))
        for rep, value in enumerate(values)
    ]  # fmt: skip
    row = summary.evaluate(goal, trials, "sse", "auto")
    assert row["met"] is True and row["reps_missed"] == 1  # 120 / 70 = 1.71 > 1.5
    lines = report._limits({"targets": [row]}, "")
    assert "met by the median, missed by 1 of 3 repetitions" in lines[0]
    assert "Redis, steady window or whole trial (cores)" in lines[0]


def test_abuse_probes_store_a_record_per_probe() -> None:
    from benchmarks import abuse

    trials = abuse.measure(abuse.TOY, lambda labels, run: {**labels, **run()})
    assert [(t["benchmark"], t["transport"]) for t in trials] == [
        ("abuse_v1", "openai"), ("abuse_nonreader", "sse"), ("abuse_nonreader", "ndjson"),
        ("abuse_longpoll", "longpoll"), ("abuse_fill", "longpoll"), ("abuse_slowloris", "http"),
    ]  # fmt: skip
    by_name = {t["benchmark"]: t for t in trials}
    assert by_name["abuse_v1"]["model129_status"] == 400
    assert _positive(by_name["abuse_v1"]["model128_growth_max"])
    for trial in trials[1:]:
        assert trial["rss_peak_bytes"] >= trial["rss_before_bytes"] > 0
        assert trial["budget_bytes"] > 0 and "held_peak_over_budget" in trial
        assert trial["victim_requests"] == abuse.TOY.victims
    for trial in trials[1:3]:  # every never-reader closed by the server, with its control read
        assert trial["closed"] == trial["connections"] == abuse.TOY.nonreaders
        assert trial["write_timeouts"] >= abuse.TOY.nonreaders and trial["control_read_bytes"] > 0
    fill, slow = by_name["abuse_fill"], by_name["abuse_slowloris"]
    assert fill["creates"] == abuse.TOY.fill_creates and "victim_refused_during" in fill
    assert slow["close_statuses"] == {"408": abuse.TOY.slowloris} and slow["not_closed"] == 0

    profile = dataclasses.asdict(suite.QUICK)
    rows = summary.targets(trials, profile)
    assert {r["benchmark"] for r in rows} == {t["benchmark"] for t in trials}
    assert all(r["reference_side"] == "" and r["reference"]["n"] == 0 for r in rows)
    assert all(r["met"] is None for r in rows if r["target"] == "context")
    assert {r["benchmark"] for r in summary.details(trials)} == set(by_name)


def test_webtransport_benchmark_runs_both_sides_on_one_server() -> None:
    """Tiny sizes: both sides measured, every token delivered and timed, target rows made."""
    from benchmarks import webtransport

    trials = webtransport.measure(4, 5, 50.0, 1, lambda labels, run: {**labels, **run()})
    assert [t["side"] for t in trials] == ["websocket", "webtransport"]
    for trial in trials:
        assert (trial["delivered_pct"], trial["tokens_lost"], trial["stream_errors"]) == (100.0,
                                                                                         0, 0)
        assert trial["latency_count"] == 4 * 5 and trial["connections"] == 4
        assert _positive(trial["latency_p99_ms"]) and _positive(trial["cpu_per_token_us"])
    assert (trials[0]["stack"], trials[0]["cc"]) == ("tcp", "kernel")
    assert (trials[1]["stack"], trials[1]["cc"]) == ("quic", "reno")
    rows = {(r["target"], r["metric"]): r
            for r in summary.targets(trials, dataclasses.asdict(suite.QUICK))}  # fmt: skip
    p99 = rows[("wt", "latency_p99_ms")]
    assert p99["met"] in (True, False) and p99["reference_side"] == "websocket"
    assert p99["value"]["n"] == p99["reference"]["n"] == 1
    assert rows[("wt", "delivered_pct")]["met"] is True


def test_webtransport_sweep_runs_each_load_with_clients_in_workers() -> None:
    """Tiny sizes: two loads, both sides, the clients in two worker processes whose loop lag
    and CPU are recorded; one target row per load."""
    from benchmarks import webtransport

    with FleetPool(2) as pool:
        measured = webtransport.measure_sweep((2, 3), 5, 50.0, 1, pool,
                                              lambda labels, run: {**labels, **run()})  # fmt: skip
    trials = cast(list[dict[str, Any]], measured)
    assert [(t["transport"], t["side"]) for t in trials] == [
        ("2 sessions", "websocket"), ("2 sessions", "webtransport"),
        ("3 sessions", "websocket"), ("3 sessions", "webtransport")]  # fmt: skip
    for trial in trials:
        assert (trial["tokens_lost"], trial["stream_errors"]) == (0, 0), trial["first_error"]
        assert trial["latency_count"] == trial["sessions"] * 5
        assert trial["client_workers"] == 2 and trial["client_lag_max_ms"] >= 0.0
        assert _positive(trial["client_cores"]) and _positive(trial["cpu_per_token_us"])
    rows = [r for r in summary.targets(trials, dataclasses.asdict(suite.QUICK))
            if r["benchmark"] == "webtransport_sweep" and r["target"] == "wt"]  # fmt: skip
    assert [r["transport"] for r in rows] == ["2 sessions"]  # a load summary.WT_SWEEP lists
    assert rows[0]["met"] in (True, False) and rows[0]["reference_side"] == "websocket"


def test_quic_delay_benchmark_sees_the_relays_delay() -> None:
    """Tiny sizes: both arms over HTTP/3 through Caddy, the relay's 40 ms each way showing in
    the median (a bound of the relay, which never releases a datagram early)."""
    from benchmarks import quic_delay

    (trial,) = quic_delay.measure(2, 5, 50.0, 1, lambda labels, run: {**labels, **run()})
    assert (trial["tokens_lost"], trial["stream_errors"]) == (0, 0), trial["first_error"]
    assert trial["direct_count"] == trial["delayed_count"] == 2 * 5
    assert trial["direct_connections"] == trial["delayed_connections"] == 2
    assert trial["delayed_p50_ms"] >= quic_delay.DELAY_MS > trial["direct_p50_ms"]
    assert trial["added_ms"] == trial["delayed_p50_ms"] - trial["direct_p50_ms"]
    assert trial["relay_datagrams"] > 0
    (row,) = [r for r in summary.targets([trial], dataclasses.asdict(suite.QUICK))
              if r["target"] == "quic"]  # fmt: skip
    assert row["met"] in (True, False) and row["value"]["n"] == 1
