"""The suite report's first screen answers: per-scenario answers, the run's size, what was
skipped with the command that runs it, and a headline of at most eight plain columns, all
inside 1280x800 in Chromium without scrolling sideways; the matrix carries its evidence."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import facts
from experiments import suite
from experiments.catalog import EXPERIMENTS
from presentation import html, summary
from records.store import StoredRun
from tests.support import chromium_page
from transports import registry

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FIGURES = facts.figures(EXPERIMENTS.values())  # the real declarations: every column there is
SKIPPED = {  # the worst case seen on a fresh machine: three experiments skipped
    "proxy": "nginx is not installed: run `make system` (installs Debian's nginx)",
    "idle-timeout": "nginx is not installed: run `make system` (installs Debian's nginx)",
    "loss": "nftables is not installed: run `make system` (network namespaces need nft)",
}


def _value(figure: str, i: int) -> float:
    """A plausible, transport-dependent value for every declared figure."""
    if FIGURES[figure][0] == "frac":
        return 1.0 if i % 3 else 0.0
    return {"capacity_n": 200.0, "capacity_tried_n": 200.0}.get(figure, 1.5 * (i + 1) + 100 * i)


def synthetic_facts() -> dict[str, dict[str, float]]:
    """Every figure for every registered transport, with sample sizes, and SSE's cut figures
    also measured with the fix (so the mobile row has two verdicts there)."""
    out: dict[str, dict[str, float]] = {}
    for i, key in enumerate(registry.KEYS):
        row = {f: _value(f, i) for f in FIGURES} | {f"n:{f}": 10.0 for f in FIGURES}
        out[key] = row
    fixed = {"cut_recovery_ms": 105.0, "cut_completed": 1.0, "cut_lost": 0.0}
    out["sse"] |= {"cut_recovery_ms": 1005.0, "cut_lost": 0.0, "cut_completed": 1.0}
    out["sse"] |= {f"{f}@fixed": v for f, v in fixed.items()}
    out["sse"] |= {f"n:{f}@fixed": 10.0 for f in fixed}
    return out


@dataclasses.dataclass(frozen=True)
class StandIn:
    """An experiment as presentation sees it (`presentation.views.ReportedExperiment`)."""

    name: str
    question: str
    figures: Mapping[str, tuple[str, str]]
    facts: Callable[[StoredRun], dict[str, dict[str, float]]]
    captions: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def draw(self, run: StoredRun) -> list[Path]:
        return []

    def tables(self, run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
        return []

    def read(self, run: StoredRun, facts: pd.DataFrame) -> str:
        return f"A reading of {self.name}."


def synthetic_report(out: Path, skipped: Mapping[str, str] = SKIPPED) -> Path:
    """A report over one stored stand-in run whose facts hold every declared figure."""
    spec: dict[str, Any] = {"transports": list(registry.KEYS), "clients": 1, "tokens": 10,
                            "rates_hz": [20.0, 150.0], "rtts_ms": [0.0, 100.0]}  # fmt: skip
    run_dir = out / "everything"
    run_dir.mkdir(parents=True)
    run = StoredRun(pd.DataFrame(), pd.DataFrame(),
                    {"experiment": "everything", "spec": spec}, run_dir)  # fmt: skip
    experiment = StandIn("everything", "all figures at once", FIGURES, lambda r: synthetic_facts())
    html.write(out, [run], dict(skipped), {"everything": experiment}, quick=True)
    return out / "report.html"


# ---- the presentation logic -----------------------------------------------------------------


def test_the_headline_has_at_most_eight_plain_columns_and_the_rest_go_to_details() -> None:
    table = pd.DataFrame.from_dict(synthetic_facts(), orient="index")
    head, rest = summary.split(summary.columns(table, FIGURES))
    assert 0 < len(head) <= summary.MAX_HEADLINE == 8
    assert {c.figure for c in head} | {c.figure for c in rest} == set(FIGURES)
    assert not any(":" in c.figure or "@" in c.figure for c in head + rest)  # evidence stays out
    assert all("_" not in c.name for c in head)  # plain names, no snake_case
    assert summary.plain_name("ttft_p50_ms", "ms") == "First token p50 (ms)"
    assert summary.plain_name("new_figure", "ms") == "new_figure (ms)"  # never dropped


def test_unmeasured_figures_leave_the_headline() -> None:
    table = pd.DataFrame({"latency_p99_ms": [1.0], "idle_conn_kib": [math.nan]}, index=["sse"])
    head, _ = summary.split(summary.columns(table, FIGURES))
    assert [c.figure for c in head] == ["latency_p99_ms"]


def test_the_size_sentence_is_read_from_the_specs() -> None:
    specs: dict[str, dict[str, Any]] = {
        "latency": {"transports": ["sse", "websocket"], "clients": 1, "tokens": 10,
                    "rates_hz": [20.0, 150.0]},
        "rtt": {"transports": ["sse"], "clients": 1, "tokens": 8, "rate": 40.0,
                "rtts_ms": [0.0, 100.0]},
        "loss": {"losses_pct": [0.0, 10.0]},
        "scale": {"ns": [10, 200], "clients": 4},
    }  # fmt: skip
    assert summary.size_sentence(specs, quick=True) == (
        "Quick size: 1\u20134 streams x 8\u201310 tokens per transport at 20\u2013150 tokens/s, "
        "2 transports; added round trip up to 100 ms (rtt); packet loss up to 10% (loss); "
        "up to 200 concurrent streams (scale)."
    )
    assert summary.size_sentence({"one": {"clients": 1, "tokens": 5}}).startswith(
        "Size: 1 stream x 5 tokens per transport"
    )
    assert summary.size_sentence({}) == "No experiment was run."
    assert summary.run_size(specs["rtt"]) == (
        "1 stream x 8 tokens per transport at 40 tokens/s, 1 transport; "
        "added round trip up to 100 ms"
    )


def test_a_skipped_experiment_comes_with_the_command_that_runs_it() -> None:
    lines = summary.skipped_lines({"proxy": " nginx is not installed "}, quick=True)
    assert lines == [("proxy", "nginx is not installed",
                      "sudo make system && .venv/bin/pushlab run proxy --quick")]  # fmt: skip
    assert summary.run_command("loss", quick=False).endswith("pushlab run loss")


def test_plain_values() -> None:
    assert summary.plain_value(0.5, "frac") == "50%"
    assert summary.plain_value(1006.74, "ms") == "1,007"
    assert summary.plain_value(2.2596, "ms") == "2.26"
    assert summary.plain_value(math.nan, "ms") == "n/a"


def test_both_reports_carry_answers_size_skips_and_the_matrix_with_its_evidence(
    tmp_path: Path,
) -> None:
    page = synthetic_report(tmp_path).read_text()
    md = (tmp_path / "report.md").read_text()
    for text in (page, md):
        assert "Thousands of idle subscribers" in text and "Quick size: 1 stream" in text
        assert "sudo make system &amp;&amp; .venv/bin/pushlab run loss --quick" in text or (
            "`sudo make system && .venv/bin/pushlab run loss --quick`" in text
        )
        assert "nftables is not installed" in text
        assert "ran to 200 streams, the rule needs 1,000" in text  # undecided, with why
        assert "Token latency p99 (ms)" in text and "Largest N tried (streams)" in text
    # undecided has its own class; a setting's two verdicts, default -> with the fix
    assert 'class="v undecided"' in page
    sse_mobile = next(r for r in md.splitlines() if r.startswith("| Mobile on lossy networks |"))
    assert "fair \u2192 good" in sse_mobile and "SSE's reconnection delay" in sse_mobile
    assert "with the fix: completed through cuts 100% (n=10 streams)" in page.replace(
        "<i>", ""
    ).replace("</i>", "")
    assert "n:latency_p99_ms" not in page and "@fixed" not in page


def _box(page: Any, selector: str) -> dict[str, float]:
    box: dict[str, float] = page.evaluate(
        "s => { const r = document.querySelector(s).getBoundingClientRect();"
        " return {top: r.top, bottom: r.bottom, right: r.right}; }",
        selector,
    )
    return box


@dataclasses.dataclass(frozen=True)
class Screen:
    """What Chromium saw of a report at 1280x800."""

    boxes: dict[str, dict[str, float]]  # selector -> its bounding box
    width: int  # document.documentElement.scrollWidth
    evidence_opens: bool  # a grade's evidence was hidden, and shown once the grade was clicked


def _first_screen(report: Path, shot: str) -> Screen:
    with chromium_page() as page:
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(report.as_uri())
        boxes = {s: _box(page, s) for s in ("#answers", "#size", "#headline")}
        if page.query_selector("#skipped"):
            boxes["#skipped"] = _box(page, "#skipped")
        width = page.evaluate("document.documentElement.scrollWidth")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=False)
        evidence = page.locator("table.matrix details.v div").first
        hidden = not evidence.is_visible()
        page.locator("table.matrix details.v summary").first.click()
        return Screen(boxes, width, hidden and evidence.is_visible())


def test_the_first_screen_answers_at_1280x800(tmp_path: Path) -> None:
    """Every registered transport, every declared figure, three experiments skipped: the
    answers, the size, the skips and the headline table all fit the first viewport."""
    screen = _first_screen(synthetic_report(tmp_path), "first_screen.png")
    assert screen.width <= 1280 and screen.evidence_opens
    assert set(screen.boxes) == {"#answers", "#size", "#skipped", "#headline"}
    for selector, box in screen.boxes.items():
        assert box["top"] >= 0 and box["bottom"] <= 800 and box["right"] <= 1280, selector


@pytest.mark.slow
def test_a_real_suite_answers_on_its_first_screen(tmp_path: Path) -> None:
    suite.run_suite(("latency",), quick=True, out=tmp_path)
    screen = _first_screen(tmp_path / "report.html", "first_screen_suite.png")
    assert screen.width <= 1280 and screen.evidence_opens
    assert all(box["bottom"] <= 800 for box in screen.boxes.values())
    text = (tmp_path / "report.md").read_text()
    assert "Quick size: 1 stream" in text and "Chat UI in browsers" in text


def test_the_harness_sentence_says_what_the_measuring_side_did() -> None:
    import types

    def run(name: str, gc: str | None, saturated: bool | None) -> types.SimpleNamespace:
        extra = {}
        if saturated is not None:
            extra["scale"] = pd.DataFrame(
                {"fleet_saturated": [False, saturated], "fleet_cpu_max_fraction": [0.3, 0.45]}
            )
        spec = {"server_gc": gc} if gc else {}
        return types.SimpleNamespace(meta={"experiment": name, "spec": spec}, extra=extra)

    calm = [run("latency", None, None), run("scale", "scheduled", False)]
    assert summary.harness_sentence(calm) == (  # type: ignore[arg-type]
        "Harness: server collector scheduled (scale); CPython's default elsewhere; "
        "no load-generator process was saturated (busiest 45% of a core)."
    )
    busy = [run("scale", "scheduled", True)]
    assert "a load-generator process was saturated in: scale" in summary.harness_sentence(busy)  # type: ignore[arg-type]
    assert summary.harness_sentence([run("latency", None, None)]) == ""  # type: ignore[arg-type]
