"""The failover and storm experiments: a node SIGKILLed mid-answer behind nginx costs the
resumable transports nothing with the Redis log and loses tokens with in-memory hubs (slow:
real redis-server, nginx and our server); the pure analysis and the matrix rule on small
hand-made frames (fast)."""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import pandas as pd
import pytest

from analysis import failover as fo
from analysis.matrix import FIXED, GOOD, POOR, RULES, answer, verdict_rows
from experiments import failover, storm
from netem.redis import redis_binary
from streams.errors import ParamError
from tests.support import UNIT

KEYS = {"condition": "c", "transport": "sse", "stream_id": "s"}
MS = 1_000_000


def tokens(*rows: tuple[int, int, int]) -> pd.DataFrame:
    """(seq, t_emit_ms, t_recv_ms) rows of one stream."""
    return pd.DataFrame([{**KEYS, "seq": s, "t_emit_ns": e * MS, "t_recv_ns": r * MS}
                         for s, e, r in rows])  # fmt: skip


def test_recovery_splits_by_generation_so_a_token_in_flight_is_no_recovery() -> None:
    # killed at 100 ms: seq 3 was generated before it and arrived after; seq 4 came from the
    # survivor at 600 ms; a duplicate of seq 2 at 590 ms is no recovery
    frame = tokens((1, 50, 51), (2, 75, 76), (3, 99, 101), (2, 75, 590), (4, 600, 602))
    kills = pd.DataFrame([{"condition": "c", "transport": "sse", "t_kill_ns": 100 * MS}])
    row = fo.recovery(frame, kills).iloc[0]
    assert (row["tokens_before"], row["recovery_ms"], row["kill_to_next_ms"]) == (3, 501, 502)


def test_recovery_of_an_answer_that_arrives_whole_has_only_kill_to_next() -> None:
    frame = tokens((1, 700, 900), (2, 700, 900))
    kills = pd.DataFrame([{"condition": "c", "transport": "sse", "t_kill_ns": 100 * MS}])
    row = fo.recovery(frame, kills).iloc[0]
    assert pd.isna(row["recovery_ms"]) and row["kill_to_next_ms"] == 800


def test_each_trial_is_measured_from_its_own_kill() -> None:
    # two trials of one condition, one stream each, killed at 100 ms and at 10,100 ms: a
    # stream matched with the other trial's kill would read as all-before or all-after
    first = tokens((1, 50, 51), (2, 99, 100), (3, 600, 601))
    second = tokens((1, 10_050, 10_051), (2, 10_099, 10_100), (3, 10_700, 10_702))
    second["stream_id"] = "t"
    kills = pd.DataFrame([
        {"condition": "c", "transport": "sse", "stream_id": "s", "t_kill_ns": 100 * MS},
        {"condition": "c", "transport": "sse", "stream_id": "t", "t_kill_ns": 10_100 * MS},
    ])  # fmt: skip
    rec = fo.recovery(pd.concat([first, second]), kills).set_index("stream_id")
    assert rec["recovery_ms"].to_dict() == {"s": 501.0, "t": 602.0}
    assert rec["kill_to_next_ms"].to_dict() == {"s": 501.0, "t": 602.0}


def test_summary_and_survivors() -> None:
    streams = pd.DataFrame([
        {"condition": "c", "transport": "sse", "error": "", "lost": 0, "duplicated": 0,
         "reconnects": 1},
        {"condition": "c", "transport": "openai", "error": "", "lost": 0, "duplicated": 8,
         "reconnects": 1},
    ])  # fmt: skip
    pairs = (("sse", 500.0), ("openai", 300.0))
    rec = pd.DataFrame([{"condition": "c", "transport": t, "recovery_ms": v,
                         "kill_to_next_ms": v} for t, v in pairs])  # fmt: skip
    table = fo.summary(streams, rec)
    assert table.set_index("transport").loc["sse", "recovery_p99_ms"] == 500
    assert fo.survivors_text(table) == (["sse"], ["openai"])


def test_cpu_cores_over_a_window() -> None:
    samples = pd.DataFrame([{"process": "node1", "t_ns": t * 10**9, "cpu_s": c, "loop_lag_ms": 1}
                            for t, c in ((0, 0.0), (1, 0.5), (2, 1.5), (3, 1.6))])  # fmt: skip
    row = fo.cpu_cores(samples, 1 * 10**9, 2 * 10**9).iloc[0]
    assert (row["cores"], row["samples"]) == (1.0, 2)


def rule_facts(**values: float) -> pd.DataFrame:
    base = {"failover_harm": 21.0, "failover_lost": 21.0, "failover_recovery_ms": 0.0,
            "failover_retry_ms": 50.0, "failover_recovery_ms" + FIXED: 600.0}  # fmt: skip
    return pd.DataFrame([{**base, "failover_harm" + FIXED: values.get(t, 0.0)}
                         for t in ("sse", "longpoll")], index=["sse", "longpoll"])  # fmt: skip


def test_node_death_rule_grades_the_redis_log_and_names_sticky_and_memory_losses() -> None:
    facts = rule_facts(longpoll=3.0)
    facts.loc["longpoll", "failover_sticky_harm" + FIXED] = 0.0
    row = next(r for r in verdict_rows(facts) if r.rule.scenario == "Survives the death of a node")
    assert [v.grade for v in row.cells["sse"]] == [POOR, GOOD]  # memory, then Redis
    assert row.final("longpoll").grade == "fair"  # clean only with sticky routing
    text = answer(row)
    assert "Needs sticky routing with the Redis log: longpoll" in text
    assert "in-memory hub lost sse 21, longpoll 21 tokens" in text
    assert any(r.scenario == "Survives the death of a node" for r in RULES)


@pytest.mark.parametrize(
    "change",
    [{"logs": ("disk",)}, {"modes": ("owner", "neighbour")}, {"kill_after_tokens": 0},
     {"repeats": 0}],
)  # fmt: skip
def test_bad_failover_settings_are_one_line(change: dict[str, Any]) -> None:
    with pytest.raises(ParamError) as info:
        dataclasses.replace(failover.Spec(), **change)
    assert "\n" not in info.value.message


def test_bad_storm_settings_are_one_line() -> None:
    with pytest.raises(ParamError, match="kill_at_s"):
        dataclasses.replace(storm.Spec(), kill_at_s=100.0)


@pytest.mark.slow
@pytest.mark.timeout(240 * UNIT)
@pytest.mark.skipif(redis_binary() is None or shutil.which("nginx") is None,
                    reason="redis-server or nginx is not installed")  # fmt: skip
def test_failover_quick_redis_loses_nothing_memory_loses() -> None:
    spec = dataclasses.replace(failover.quick(failover.Spec()),
                               transports=("sse", "websocket", "longpoll"),
                               sticky_transports=("longpoll",))  # fmt: skip
    tables = failover.run(spec, run_id="test")
    streams = tables.streams
    redis = streams[streams["condition"].str.startswith("log=redis")]
    assert len(redis) == 3 + 3 + 1  # serving x3, owner x3, sticky longpoll
    assert (redis["lost"] == 0).all() and (redis["duplicated"] == 0).all()
    assert (redis["error"] == "").all()
    memory = streams[streams["condition"].str.startswith("log=memory")]
    assert (memory["lost"] > 0).all()  # the survivor has no such stream: 404
    rec = tables.extra["recovery"]
    assert rec[rec["condition"].str.startswith("log=redis")]["recovery_ms"].notna().all()


@pytest.mark.slow
@pytest.mark.timeout(240 * UNIT)
@pytest.mark.skipif(redis_binary() is None or shutil.which("nginx") is None,
                    reason="redis-server or nginx is not installed")  # fmt: skip
def test_storm_quick_every_stream_of_the_dead_node_resumes_on_a_survivor() -> None:
    spec = dataclasses.replace(storm.quick(storm.Spec()), transports=("sse",), streams=6,
                               backoffs_ms=(50.0,), retry_ms=(100.0,))  # fmt: skip
    tables = storm.run(spec, run_id="test")
    streams = tables.streams
    assert len(streams) == 6 and (streams["lost"] == 0).all()
    assert (streams["duplicated"] == 0).all() and (streams["reconnects"] >= 1).all()
    assert tables.extra["recovery"]["kill_to_next_ms"].notna().all()
    load = tables.extra["load"]
    assert {"node1", "node2", "redis"} <= set(load["process"])
