"""Verdicts carry their evidence, say "undecided" when the run could not decide, show a
setting's fix beside the default; readings say only what synthetic numbers support."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pandas as pd
import pytest

from analysis.matrix import (
    FAIR,
    FIXED,
    GOOD,
    NA,
    POOR,
    UNDECIDED,
    answer,
    count_of,
    matrix,
    verdict_rows,
)
from experiments.catalog import EXPERIMENTS


def facts_of(**rows: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(list(rows.values()), index=pd.Index(list(rows), name="transport"))


def row_for(scenario: str, table: pd.DataFrame):  # type: ignore[no-untyped-def]
    return next(r for r in verdict_rows(table) if r.rule.scenario == scenario)


CHAT = {"latency_p99_ms": 2.26, count_of("latency_p99_ms"): 10.0, "requests_per_answer": 1.0,
        count_of("requests_per_answer"): 1.0}  # fmt: skip


def test_a_cell_cites_the_figures_and_sample_sizes_it_was_graded_on() -> None:
    [cell] = row_for("Chat UI in browsers", facts_of(sse=CHAT)).cells["sse"]
    assert cell.grade == GOOD
    assert cell.evidence == "token p99 2.26 ms (n=10 tokens); requests per answer 1 (n=1 streams)"


def test_a_figure_not_measured_is_na_and_says_which() -> None:
    [cell] = row_for("Chat UI in browsers", facts_of(sse={"latency_p99_ms": 3.0})).cells["sse"]
    assert cell.grade == NA and cell.evidence == "not measured: requests per answer"


IDLE = {"idle_conn_kib": 14.0, count_of("idle_conn_kib"): 200.0}


@pytest.mark.parametrize(
    ("capacity", "tried", "grade"),
    [
        (200.0, 200.0, UNDECIDED),  # met the target at every N tried, and that was 200
        (100.0, 200.0, FAIR),  # missed it at 200: capacity found, and it is 100
        (1000.0, 1000.0, GOOD),  # met it at 1000: enough to decide
        (5000.0, 5000.0, GOOD),
    ],
)
def test_capacity_that_was_never_reached_cannot_grade_idle_subscribers(
    capacity: float, tried: float, grade: str
) -> None:
    table = facts_of(sse={**IDLE, "capacity_n": capacity, "capacity_tried_n": tried})
    [cell] = row_for("Thousands of idle subscribers", table).cells["sse"]
    assert cell.grade == grade
    if grade == UNDECIDED:
        assert cell.evidence.startswith("ran to 200 streams, the rule needs 1,000")


LOSSY = {"cut_completed": 1.0, "cut_lost": 0.0, "loss_p99_ms": 20.0, "cut_recovery_ms": 1007.0,
         "cut_completed" + FIXED: 1.0, "cut_lost" + FIXED: 0.0, "cut_recovery_ms" + FIXED: 110.0,
         count_of("cut_recovery_ms"): 3.0, count_of("cut_recovery_ms" + FIXED): 3.0}  # fmt: skip


def test_a_setting_shows_the_verdict_at_the_default_and_with_the_fix() -> None:
    row = row_for("Mobile on lossy networks", facts_of(sse=LOSSY))
    default, fixed = row.cells["sse"]
    assert (default.grade, fixed.grade) == (FAIR, GOOD)
    assert "1000 ms" in default.setting and "100 ms" in fixed.setting
    assert "longest recovery 1,007 ms (n=3 cuts)" in default.evidence
    assert "longest recovery 110 ms (n=3 cuts)" in fixed.evidence
    assert matrix(facts_of(sse=LOSSY)).set_index("scenario").at[row.rule.scenario, "sse"] == FAIR
    text = answer(row)
    assert text.startswith("Mobile on lossy networks: good: sse.")
    fix = "With retry: 100 ms instead of retry: 1000 ms (pushlab's default): sse fair → good."
    assert fix in text


def test_without_the_fix_measured_a_cell_has_one_verdict() -> None:
    plain = {k: v for k, v in LOSSY.items() if FIXED not in k}
    assert len(row_for("Mobile on lossy networks", facts_of(sse=plain)).cells["sse"]) == 1


def test_a_stream_lost_to_the_cuts_is_poor_even_without_recovery_figures() -> None:
    table = facts_of(oneshot={"cut_completed": 0.0, "cut_lost": 30.0, "loss_p99_ms": 470.0},
                     sse={"cut_completed": 1.0, "cut_lost": 0.0})  # fmt: skip
    row = row_for("Mobile on lossy networks", table)
    assert row.cells["oneshot"][0].grade == POOR
    assert row.cells["sse"][0].grade == UNDECIDED  # survived: good or fair needs the rest


def test_answers_list_grades_and_say_when_nothing_could_be_graded() -> None:
    table = facts_of(sse=CHAT, oneshot={**CHAT, "latency_p99_ms": 446.0}, ws={})
    text = answer(row_for("Chat UI in browsers", table))
    assert text == "Chat UI in browsers: good: sse; poor: oneshot. N/a: ws."
    nothing = answer(row_for("Server-to-server relay", table))
    assert nothing == (
        "Server-to-server relay: no transport could be graded (not measured in this run)."
    )


# --- readings on synthetic runs --------------------------------------------------------------


def run_of(experiment: str, **extra: pd.DataFrame) -> types.SimpleNamespace:
    return types.SimpleNamespace(meta={"experiment": experiment, "spec": {}}, extra=extra,
                                 streams=pd.DataFrame(), tokens=pd.DataFrame())  # fmt: skip


def scale_table(points: list[tuple[str, int, float, float, float]]) -> pd.DataFrame:
    """(transport, n, p99 ms, server CPU s over a 10 s wall, loop lag ms) per point."""
    return pd.DataFrame(
        [{"transport": t, "n": n, "delivered_ratio": 1.0, "errors": 0, "latency_p99_ms": p99,
          "server_cpu_s": cpu, "wall_s": 10.0, "loop_lag_max_ms": lag, "target_p99_ms": 100.0}
         for t, n, p99, cpu, lag in points]
    )  # fmt: skip


def read(experiment: str, run: types.SimpleNamespace, table: pd.DataFrame) -> str:
    return EXPERIMENTS[experiment].read(run, table)  # type: ignore[arg-type]


def test_scale_never_claims_a_capacity_it_did_not_reach() -> None:
    never = scale_table([("sse", 10, 2.0, 1.0, 1.0), ("sse", 200, 3.0, 2.0, 4.0)])
    text = read("scale", run_of("scale", scale=never), facts_of(sse={"capacity_n": 200.0}))
    assert text == (
        "Met the p99 < 100 ms target at every N tried, so capacity is at least 200 (sse)."
    )
    assert "CPU" not in text


def test_scale_blames_the_cpu_only_when_the_figures_show_it() -> None:
    busy = scale_table([("sse", 100, 5.0, 3.0, 2.0), ("sse", 1000, 400.0, 9.8, 90.0)])
    text = read("scale", run_of("scale", scale=busy), facts_of(sse={"capacity_n": 100.0}))
    assert "sse: capacity 100 streams; at 1000, p99 400 ms" in text
    assert "server CPU 98% of a core, loop lag 90 ms: the server process was CPU-bound" in text
    idle = scale_table([("sse", 100, 5.0, 3.0, 2.0), ("sse", 1000, 400.0, 2.0, 3.0)])
    text = read("scale", run_of("scale", scale=idle), facts_of(sse={"capacity_n": 100.0}))
    assert "CPU-bound" not in text and "do not show saturation" in text


def test_readings_say_when_transports_were_alike() -> None:
    alike = facts_of(sse={"latency_p99_ms": 0.71, "bytes_per_token": 120.0},
                     ws={"latency_p99_ms": 0.74, "bytes_per_token": 121.0})  # fmt: skip
    text = read("latency", run_of("latency"), alike)
    assert text == (
        "Token latency p99 was alike for all 2 transports (0.71-0.74 ms). "
        "Bytes down per token was alike for all 2 transports (120-121 B)."
    )


def test_a_reading_with_one_transport_missing_names_only_the_measured() -> None:
    table = facts_of(sse={"latency_p99_ms": 0.7, "bytes_per_token": 140.0},
                     oneshot={"latency_p99_ms": 446.0, "bytes_per_token": 107.0},
                     ws={"latency_p99_ms": math.nan, "bytes_per_token": math.nan})  # fmt: skip
    text = read("latency", run_of("latency"), table)
    assert "ws" not in text and "from 0.7 ms (sse) to 446 ms (oneshot)" in text


def test_a_reading_of_a_skipped_experiment_says_it_has_nothing() -> None:
    table = facts_of(sse={"latency_p99_ms": math.nan, "bytes_per_token": math.nan})
    text = read("latency", run_of("latency"), table)
    assert text.startswith("Not enough measured figures for a reading")


def test_the_proxy_reading_names_the_fix_that_made_a_held_stream_stream() -> None:
    spread, fixed = "proxy_min_spread", "proxy_min_spread" + FIXED
    table = facts_of(sse={spread: 0.0, fixed: 1.0}, websocket={spread: 1.0, fixed: 1.0},
                     oneshot={spread: 0.0, fixed: 0.0})  # fmt: skip
    text = read("proxy", run_of("proxy"), table)
    assert "at its defaults, streamed as generated: websocket; held and sent in bursts: sse, " \
           "oneshot." in text  # fmt: skip
    assert "X-Accel-Buffering: no, these streamed too: sse." in text
    assert "Still held with every fix measured: oneshot." in text


def test_behind_proxies_shows_what_heartbeats_and_nginx_settings_change() -> None:
    spread, ok = "proxy_min_spread", "idle_timeout_ok"
    table = facts_of(
        openai={ok: 0.0, ok + FIXED: 1.0, spread: 0.0, spread + FIXED: 1.0},  # cannot resume
        sse={ok: 1.0, ok + FIXED: 1.0, spread: 0.0, spread + FIXED: 1.0},  # resumes, but held
    )
    row = row_for("Behind corporate proxies", table)
    assert [v.grade for v in row.cells["openai"]] == [POOR, GOOD]
    assert [v.grade for v in row.cells["sse"]] == [FAIR, GOOD]
    assert "heartbeats shorter than proxy_read_timeout" in row.cells["sse"][1].setting


def test_browser_tab_facts_land_in_their_transports_columns(tmp_path: Path) -> None:
    """The page's clients ("browser-sse") grade their transport ("sse"); the share that
    stalled is read at the largest n, over HTTP/1.1 and (the fix) over HTTP/2 fronts, and
    the lowered-limit path is left out."""
    from experiments import browser_connections
    from records import store
    from records.schema import empty_tables

    rows = [
        {"path": path, "n_open": n, "transport": client, "stalled": stalled, "index": i}
        for path, n, client, stalled in [
            ("http1.1", 6, "browser-sse", [False] * 6),
            ("http1.1", 8, "browser-sse", [False] * 6 + [True] * 2),
            ("nginx-h2", 8, "browser-sse", [False] * 8),
            ("nginx-h2-max4", 8, "browser-sse", [False] * 4 + [True] * 4),
            ("http1.1", 8, "browser-websocket", [False] * 8),
        ]
        for i, stalled in enumerate(stalled)
    ]
    base = empty_tables()
    tables = type(base)(base.tokens, base.streams, extra={"connections": pd.DataFrame(rows)})
    run = store.load(store.save(tables, {"experiment": "browser-connections"}, tmp_path / "r"))
    facts = browser_connections.facts(run)
    assert facts["sse"]["tab_stalled"] == 0.25 and facts["sse"]["n:tab_stalled"] == 8
    assert facts["sse"]["tab_stalled@fixed"] == 0.0  # the max4 path is not the fix
    assert facts["websocket"]["tab_stalled"] == 0.0
    assert "browser-sse" not in facts
