"""The suite report: facts from stored runs, a matrix that follows the numbers, a
self-contained HTML page that renders every chart in real Chromium, and run comparison."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import facts
from analysis.matrix import FAIR, GOOD, NA, POOR, RULES, matrix
from experiments import suite
from experiments.catalog import EXPERIMENTS
from presentation.compare import compare
from records import store
from tests.support import chromium_page


def good_facts() -> pd.DataFrame:
    row = {"latency_p99_ms": 5.0, "requests_per_answer": 1.0, "cut_completed": 1.0,
           "cut_lost": 0.0,
           "loss_p99_ms": 50.0, "cut_recovery_ms": 60.0, "idle_timeout_ok": 1.0,
           "proxy_min_spread": 1.0, "idle_conn_kib": 14.0, "capacity_n": 2500.0,
           "cancel_wasted": 0.0, "cancel_extra_requests": 0.0,
           "relay_added_p50_ms": 0.3, "tab_stalled": 0.0, "tls_bytes_per_token": 22.0,
           "tls_conns_per_answer": 1.0, "failover_harm": 0.0, "failover_sticky_harm": 0.0,
           "failover_recovery_ms": 600.0, "failover_retry_ms": 50.0,
           "browser_auth_ok": 1.0}  # fmt: skip
    return pd.DataFrame([row], index=pd.Index(["x"], name="transport"))


def test_every_rule_says_good_for_good_numbers() -> None:
    assert set(matrix(good_facts())["x"]) == {GOOD}


@pytest.mark.parametrize(
    ("figure", "value", "scenario", "verdict"),
    [
        ("latency_p99_ms", 120.0, "Chat UI in browsers", FAIR),
        ("latency_p99_ms", 900.0, "Chat UI in browsers", POOR),
        ("cut_lost", 3.0, "Mobile on lossy networks", POOR),
        ("cut_recovery_ms", 1000.0, "Mobile on lossy networks", FAIR),
        ("proxy_min_spread", 0.0, "Behind corporate proxies", FAIR),
        ("idle_timeout_ok", 0.0, "Behind corporate proxies", POOR),
        ("idle_conn_kib", 30.0, "Thousands of idle subscribers", FAIR),
        ("cancel_extra_requests", 1.0, "Bidirectional control (cancel)", FAIR),
        ("cancel_wasted", 40.0, "Bidirectional control (cancel)", POOR),
        ("relay_added_p50_ms", 30.0, "Server-to-server relay", FAIR),
        ("relay_added_p50_ms", math.nan, "Server-to-server relay", NA),
        ("tab_stalled", 0.2, "Many streams in one browser tab", FAIR),
        ("tab_stalled", 0.4, "Many streams in one browser tab", POOR),
        ("tls_bytes_per_token", 44.0, "Production behind TLS", FAIR),
        ("tls_conns_per_answer", 6.0, "Production behind TLS", FAIR),
        ("tls_bytes_per_token", 80.0, "Production behind TLS", POOR),
        ("failover_recovery_ms", 2000.0, "Survives the death of a node", FAIR),
        ("failover_harm", 30.0, "Survives the death of a node", FAIR),  # fine when sticky
        ("browser_auth_ok", 0.5, "Authentication in browsers", FAIR),  # EventSource: no header
        ("browser_auth_ok", 0.0, "Authentication in browsers", POOR),
    ],
)
def test_cells_change_when_the_numbers_change(
    figure: str, value: float, scenario: str, verdict: str
) -> None:
    altered = good_facts()
    altered.loc["x", figure] = value
    grid = matrix(altered).set_index("scenario")
    assert grid.loc[scenario, "x"] == verdict
    assert grid.loc[scenario, "rule"] == next(r.text for r in RULES if r.scenario == scenario)


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    suite.run_suite(("latency", "reconnect"), quick=True, out=out)
    return out


@pytest.mark.slow
def test_suite_writes_runs_and_a_self_contained_report(small_suite: Path) -> None:
    html = (small_suite / "report.html").read_text()
    assert (small_suite / "latency" / "meta.json").is_file() and (
        small_suite / "reconnect" / "tokens.parquet"
    ).is_file()
    assert (
        "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    )  # no network needed
    charts = len(list(small_suite.glob("*/*.png")))  # each run's charts, drawn once when stored
    assert charts >= 2 and html.count('src="data:image/png;base64,') == charts
    assert "Recommendation matrix" in html and "Chat UI in browsers" in html
    headline = facts.collect(store.load_runs([small_suite]), EXPERIMENTS)
    assert headline.shape[0] >= 6 and headline["latency_p99_ms"].notna().all()


@pytest.mark.slow
def test_report_renders_every_chart_in_chromium(small_suite: Path, tmp_path: Path) -> None:
    with chromium_page() as page:
        page.goto((small_suite / "report.html").as_uri())
        broken = page.evaluate(
            "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"
        )
        total = page.evaluate("document.images.length")
        artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=False)
    assert total == len(list(small_suite.glob("*/*.png"))) and broken == 0


@pytest.mark.slow
def test_compare_reports_ratios_between_two_runs(small_suite: Path) -> None:
    table = compare(small_suite, small_suite / "latency", EXPERIMENTS)
    assert not table.empty
    assert (table["ratio"] == 1.0).all()  # the same run compared with itself
    assert set(table["figure"]) >= {"latency_p99_ms", "bytes_per_token"}
